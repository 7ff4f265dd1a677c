package shaping

import (
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
)

// Remove deletes the ifb of hostVeth; a missing one is fine (DEL
// policy). The veth's own qdiscs go with the veth.
func Remove(hostVeth string) error {
	return DeleteIfb(IfbName(hostVeth))
}

// DeleteIfb deletes the ifb device called name; a missing one is fine.
func DeleteIfb(name string) error {
	return links.Delete(name)
}

// OrphanIfbs lists Pier's ifb devices whose host veth is gone: leftovers of
// an attachment whose DEL did not run. GC deletes them. It dumps the
// node's links: GC only.
func OrphanIfbs() ([]string, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[string]bool{}
	for _, l := range links {
		names[l.Attrs().Name] = true
	}
	var out []string
	for _, l := range links {
		name := l.Attrs().Name
		if _, ok := l.(*netlink.Ifb); ok && strings.HasPrefix(name, "pifb") && !names["veth"+strings.TrimPrefix(name, "pifb")] {
			out = append(out, name)
		}
	}
	return out, nil
}
