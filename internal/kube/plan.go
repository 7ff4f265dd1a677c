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
// A Node's spec is written by many hands, and a route takes whatever it
// covers, so a range is routed only when it is a pod range of this
// cluster and nobody else's: inside one of clusterCIDRs (none: nothing is
// routed), holding no node's address (InternalIP or VTEP: a /32 of
// another node's address would take this node's traffic to it, and in
// vxlan mode the tunnel to it), overlapping none of self's ranges and no
// range routed already (nodes in name order, the first wins). In vxlan
// mode, nodes that publish one VTEP or one MAC (each other's, or this
// node's) are all left out: whichever won would take the others' traffic.
// What the node's kernel holds (its other networks) is package routing's
// to check.
func Plan(mode string, self Node, nodes []Node, clusterCIDRs []netip.Prefix) (routing.State, []string) {
	var s routing.State
	var problems []string
	var routed []netip.Prefix
	order := slices.Clone(nodes)
	slices.SortFunc(order, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	var excluded map[string]string
	if mode == routing.ModeVXLAN {
		excluded = vtepConflicts(self, order)
	}
	addrs := nodeAddrs(self, order)
	for _, n := range order {
		if n.Name == self.Name {
			continue
		}
		var hops []netip.Addr
		for _, p := range n.PodCIDRs {
			why := excluded[n.Name]
			if why == "" {
				why = conflict(p, self, routed, clusterCIDRs, addrs)
			}
			var via netip.Addr
			if why == "" {
				via, why = nextHop(mode, self, n, p)
			}
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

// nodeAddr is an address a node publishes, and whose it is.
type nodeAddr struct {
	addr netip.Addr
	node string
}

// nodeAddrs are the InternalIPs and VTEPs of every node, self included.
func nodeAddrs(self Node, nodes []Node) []nodeAddr {
	var out []nodeAddr
	for _, n := range append([]Node{self}, nodes...) {
		for _, a := range []netip.Addr{n.InternalIP4, n.InternalIP6, n.VTEP} {
			if a.IsValid() {
				out = append(out, nodeAddr{a, n.Name})
			}
		}
	}
	return out
}

// conflict says why p cannot be routed to another node: it lies outside
// the cluster CIDRs, holds a node's address, or overlaps one of self's
// ranges or a range routed already.
func conflict(p netip.Prefix, self Node, routed, clusterCIDRs []netip.Prefix, addrs []nodeAddr) string {
	if p.Bits() == 0 {
		return "it holds every address"
	}
	if !slices.ContainsFunc(clusterCIDRs, func(c netip.Prefix) bool { return c.Bits() <= p.Bits() && c.Contains(p.Addr()) }) {
		if len(clusterCIDRs) == 0 {
			return "no cluster CIDR is known (pierd --cluster-cidr), so no range is a pod range"
		}
		return fmt.Sprintf("it lies outside the cluster CIDRs %v", clusterCIDRs)
	}
	for _, a := range addrs {
		if !p.Contains(a.addr) {
			continue
		}
		if a.node == self.Name {
			return "it holds this node's address " + a.addr.String()
		}
		return fmt.Sprintf("it holds node %s's address %s", a.node, a.addr)
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

// vtepConflicts finds the nodes (by name) that publish a VTEP address or
// MAC another node publishes too, or this node's own, and says why each
// is left out. Every one of them is: the FDB can send a MAC to one address
// only, and no node can be trusted over another by what it publishes.
func vtepConflicts(self Node, nodes []Node) map[string]string {
	byVTEP := map[netip.Addr][]string{}
	byMAC := map[string][]string{}
	for _, n := range nodes {
		if n.Name == self.Name || !n.VTEP.IsValid() {
			continue
		}
		byVTEP[n.VTEP] = append(byVTEP[n.VTEP], n.Name)
		byMAC[n.VTEPMAC.String()] = append(byMAC[n.VTEPMAC.String()], n.Name)
	}
	out := map[string]string{}
	for _, n := range nodes {
		switch {
		case n.Name == self.Name || !n.VTEP.IsValid():
		case n.VTEP == self.VTEP:
			out[n.Name] = "its VTEP " + n.VTEP.String() + " is this node's"
		case self.VTEP.IsValid() && n.VTEPMAC.String() == routing.MACFor(self.VTEP).String():
			out[n.Name] = "its VTEP MAC " + n.VTEPMAC.String() + " is this node's"
		case len(byVTEP[n.VTEP]) > 1:
			out[n.Name] = fmt.Sprintf("nodes %s all publish VTEP %s: none is routed", strings.Join(byVTEP[n.VTEP], ", "), n.VTEP)
		case len(byMAC[n.VTEPMAC.String()]) > 1:
			out[n.Name] = fmt.Sprintf("nodes %s all publish VTEP MAC %s: none is routed", strings.Join(byMAC[n.VTEPMAC.String()], ", "), n.VTEPMAC)
		}
	}
	return out
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
		}
		return p.Addr(), ""
	}
	return netip.Addr{}, "routing mode " + mode + " routes nothing"
}
