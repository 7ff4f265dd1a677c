// Package container configures the container's end of an attachment,
// inside the container's network namespace: its addresses (with IPv6
// duplicate address detection when asked), the link up, its routes; reads
// them back for CHECK and inspection; and deletes the interface on DEL,
// returning the addresses it had. The veth pair itself is made by package
// veth.
//
// Container namespaces are reached by path through a netlink socket bound
// to them (netlink.NewHandleAt), so no goroutine has to switch namespaces
// for ordinary work. Only container sysctls under /proc/sys/net need a
// thread inside the container namespace, and they are off the default path
// (see Configure). Dumps made here list a container namespace's objects: a
// handful.
package container

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
	pnetns "github.com/pier-cni/pier/internal/netns"
	"github.com/pier-cni/pier/internal/sysctl"
)

// ErrNotFound is returned (wrapped) when the namespace or the interface is
// not there.
var ErrNotFound = links.ErrNotFound

// Route is a route of the container interface. A zero Gw means the
// destination is on-link through the interface.
type Route struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

// IPConfig is what Configure applies to the container end.
type IPConfig struct {
	Addrs  []netip.Prefix
	Routes []Route // 0.0.0.0/0 and ::/0 allowed
	// EnableDAD runs IPv6 duplicate address detection on the addresses
	// and waits for it to finish; otherwise they are usable at once.
	EnableDAD bool
}

// handle is a container namespace opened by path, with a netlink handle
// bound to it, for the length of one exported call.
type handle struct {
	ns   pnetns.NS
	h    *netlink.Handle
	path string
}

// open opens the namespace at path. A path that does not exist or
// is not a network namespace (a runtime's leftover file) yields
// ErrNotFound.
func open(path string) (*handle, error) {
	cns, err := pnetns.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, pnetns.ErrNotNetNS) {
			return nil, fmt.Errorf("netns %s: %w (%v)", path, ErrNotFound, err)
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	// The handle's socket is created inside the namespace (one setns there
	// and back, done by the library); every request then runs from here.
	h, err := netlink.NewHandleAt(netns.NsHandle(cns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		cns.Close()
		return nil, fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	return &handle{ns: cns, h: h, path: path}, nil
}

func (c *handle) close() {
	c.h.Close()
	_ = c.ns.Close() // a read-only fd: closing cannot lose anything
}

// link looks ifName up in the container, wrapping ErrNotFound if absent.
func (c *handle) link(ifName string) (netlink.Link, error) {
	l, err := c.h.LinkByName(ifName)
	if links.IsNotExist(err) {
		return nil, fmt.Errorf("%s in %s: %w", ifName, c.path, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s in %s: %w", ifName, c.path, err)
	}
	return l, nil
}

// sysctl writes a sysctl of the container namespace; it runs on a thread
// switched into the namespace, because /proc/sys/net shows the sysctls of
// the reading thread's namespace.
func (c *handle) sysctl(key, val string) error {
	return pnetns.Do(c.path, func() error { return sysctl.Ensure(key, val) })
}
