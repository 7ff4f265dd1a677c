// Package links holds what the packages that build an attachment's links
// (bridge, veth, container, shaping) share about links: deleting one by
// name and telling a missing one from a failure, the DEL policy's two
// needs; and the conversions between net/netip, which Pier uses inside,
// and the net types of vishvananda/netlink.
package links

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned (wrapped) when a link or namespace that is read
// does not exist.
var ErrNotFound = errors.New("not found")

// Delete deletes the link called name in the caller's namespace; a link
// that is gone already, or goes while this runs, is not an error: rollback,
// DEL and GC call it for links that may be gone.
func Delete(name string) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("delete %s: open netlink: %w", name, err)
	}
	defer h.Close()
	return DeleteByName(h, name)
}

// DeleteByName deletes the link called name through h; a link that is gone
// already, or goes while this runs, is not an error.
func DeleteByName(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if IsNotExist(err) {
		return nil
	}
	if err == nil {
		err = h.LinkDel(l)
	}
	if err != nil && !IsNotExist(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// IsNotExist reports whether err says a link is gone: the library's
// lookup error, or ENODEV from a request on an index that vanished.
func IsNotExist(err error) bool {
	return errors.As(err, &netlink.LinkNotFoundError{}) || errors.Is(err, unix.ENODEV)
}

// Exists reports whether the node has a link called name.
func Exists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	switch {
	case err == nil:
		return true, nil
	case IsNotExist(err):
		return false, nil
	default:
		return false, fmt.Errorf("look up link %s: %w", name, err)
	}
}
