package kube

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/pier-cni/pier/internal/routing"
)

// Plan computes the routes from the node self to the pod ranges of the
// other nodes, in mode (routing.ModeHostGW or routing.ModeVXLAN), and says
// what it left out and why (sorted, for logs that change only when the
// situation does):
//
//   - host-gw: each range via the node's InternalIP of the range's family.
//   - vxlan: each range via its own network address, a neighbour key on
//     pier.vxlan that resolves to the node's VTEP MAC, whose frames go to
//     the node's VTEP address (the node's annotations). The key is of the
//     range's family, so IPv6 ranges cross an IPv4 underlay and back.
//
// A range that overlaps self's ranges, or a range already routed (nodes
// in name order, the first wins), is never routed: two nodes cannot both
// own an address, and a route to a range of self would take its pods'
// traffic away.
func Plan(mode string, self Node, nodes []Node) (routing.State, []string) {
	var s routing.State
	var problems []string
	var routed []netip.Prefix
	order := slices.Clone(nodes)
	slices.SortFunc(order, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	for _, n := range order {
		if n.Name == self.Name {
			continue
		}
		var hops []netip.Addr
		for _, p := range n.PodCIDRs {
			if why := conflict(p, self, routed); why != "" {
				problems = append(problems, fmt.Sprintf("node %s: range %s not routed: %s", n.Name, p, why))
				continue
			}
			via, why := nextHop(mode, self, n, p)
			if why != "" {
				problems = append(problems, fmt.Sprintf("node %s: range %s not routed: %s", n.Name, p, why))
				continue
			}
			routed = append(routed, p)
			s.Routes = append(s.Routes, routing.Route{Dst: p, Via: via})
			hops = append(hops, via)
		}
		if mode == routing.ModeVXLAN && len(hops) > 0 {
			s.Peers = append(s.Peers, routing.Peer{Underlay: n.VTEP, MAC: n.VTEPMAC, NextHops: hops})
		}
	}
	slices.Sort(problems)
	return s, problems
}

// conflict says why p cannot be routed to another node: it overlaps one of
// self's ranges or a range routed already, or it holds self's own
// addresses (a default route, or the underlay itself, would be taken over
// by a Node object's spec).
func conflict(p netip.Prefix, self Node, routed []netip.Prefix) string {
	if p.Bits() == 0 {
		return "it holds every address"
	}
	for _, a := range []netip.Addr{self.InternalIP4, self.InternalIP6, self.VTEP} {
		if a.IsValid() && p.Contains(a) {
			return "it holds this node's address " + a.String()
		}
	}
	for _, o := range self.PodCIDRs {
		if o.Overlaps(p) {
			return "it overlaps this node's range " + o.String()
		}
	}
	for _, r := range routed {
		if r.Overlaps(p) {
			return "it overlaps " + r.String() + ", routed to an earlier node"
		}
	}
	return ""
}

// nextHop is p's next hop in mode, or why there is none.
func nextHop(mode string, self, n Node, p netip.Prefix) (netip.Addr, string) {
	v4 := p.Addr().Is4()
	switch mode {
	case routing.ModeHostGW:
		via := n.InternalIP(v4)
		switch {
		case !via.IsValid():
			return netip.Addr{}, "the node has no InternalIP of its family"
		case via == self.InternalIP4 || via == self.InternalIP6:
			return netip.Addr{}, "the node's InternalIP " + via.String() + " is this node's"
		case p.Contains(via):
			return netip.Addr{}, "it holds its own next hop " + via.String()
		}
		return via, ""
	case routing.ModeVXLAN:
		switch {
		case !n.VTEP.IsValid():
			return netip.Addr{}, "the node has published no VTEP yet (is its pierd running?)"
		case self.VTEP.IsValid() && n.VTEP.Is4() != self.VTEP.Is4():
			return netip.Addr{}, "its VTEP " + n.VTEP.String() + " is of another family than this node's"
		case n.VTEP == self.VTEP:
			return netip.Addr{}, "its VTEP " + n.VTEP.String() + " is this node's"
		}
		return p.Addr(), ""
	}
	return netip.Addr{}, "routing mode " + mode + " routes nothing"
}
