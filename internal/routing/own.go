package routing

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ownNetworks is what the node's kernel says belongs to the node itself,
// outside Pier's links (Bridges and pier.vxlan): what no route of Pier's
// may take.
type ownNetworks struct {
	// addrs are the node's addresses, each with its link's name.
	addrs []ownAddr
	// connected are the networks of those addresses and the routes of
	// scope link (reached directly over a link), each with its link.
	connected []ownPrefix
	// routes are the node's other routes of the main table (not Pier's,
	// not the default route): a Pier route must not cover one.
	routes []ownPrefix
}

type ownAddr struct {
	addr netip.Addr
	link string
}

type ownPrefix struct {
	prefix netip.Prefix
	link   string
}

// ownNetworks reads the node's addresses and its main table's routes,
// leaving out those of Pier's links.
func (p *Programmer) ownNetworks(h *netlink.Handle) (ownNetworks, error) {
	links, err := h.LinkList()
	if err != nil {
		return ownNetworks{}, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		if a := l.Attrs(); a.Name != VXLANDevice && !slices.Contains(p.Bridges, a.Name) {
			names[a.Index] = a.Name
		}
	}
	var own ownNetworks
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return ownNetworks{}, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		name, ok := names[a.LinkIndex]
		ip, okIP := netip.AddrFromSlice(a.IP)
		pfx, okPfx := prefixOf(a.IPNet)
		if !ok || !okIP || !okPfx || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		own.addrs = append(own.addrs, ownAddr{ip.Unmap(), name})
		if pfx.Bits() < pfx.Addr().BitLen() {
			own.connected = append(own.connected, ownPrefix{pfx, name})
		}
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return ownNetworks{}, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			name, ok := names[r.LinkIndex]
			dst, okDst := prefixOf(r.Dst)
			if r.Protocol == Protocol || !okDst || dst.Bits() == 0 || dst.Addr().IsLinkLocalUnicast() {
				continue
			}
			if r.LinkIndex != 0 && !ok {
				continue // a route over one of Pier's links
			}
			if r.Scope == netlink.SCOPE_LINK && len(r.Gw) == 0 {
				own.connected = append(own.connected, ownPrefix{dst, name})
			} else {
				own.routes = append(own.routes, ownPrefix{dst, name})
			}
		}
	}
	return own, nil
}

// conflict says how a route to dst would take what is the node's own, or
// "" when it would not: it holds one of the node's addresses, overlaps a
// network connected to one of its links, or covers another of its routes.
// A wider route of the node's (a default route, 10.0.0.0/8 via a router)
// is no conflict: a pod range inside it is what routing it is for.
func (o ownNetworks) conflict(dst netip.Prefix) string {
	for _, a := range o.addrs {
		if dst.Contains(a.addr) {
			return fmt.Sprintf("holds %s, an address of %s", a.addr, a.link)
		}
	}
	for _, c := range o.connected {
		if dst.Overlaps(c.prefix) {
			return fmt.Sprintf("overlaps %s, a network of %s", c.prefix, c.link)
		}
	}
	for _, r := range o.routes {
		if r.prefix.Bits() >= dst.Bits() && dst.Overlaps(r.prefix) {
			return fmt.Sprintf("covers %s, a route of the node's", r.prefix)
		}
	}
	return ""
}
