// Package routing is the data plane of the routes between nodes: it makes
// the node's kernel hold exactly a desired State — one route per remote pod
// range, and in vxlan mode the vxlan device with one FDB entry and one
// neighbour entry per remote next hop. It knows nothing of where the State
// comes from: pierd's cluster mode derives it from address blocks in etcd
// (package cluster), its Kubernetes mode from Node objects (package kube).
//
// # Modes
//
//   - host-gw: "range via <node's underlay address>". The nodes share an L2
//     link; no encapsulation, no MTU cost.
//   - vxlan: a device pier.vxlan (VNI 1, UDP 8472, learning off, MAC chosen
//     by the caller) on the link holding the local VTEP address. A remote
//     range is routed "via <next hop> dev pier.vxlan onlink"; the next hop is
//     only a key: a permanent neighbour entry turns it into the remote
//     VTEP's MAC, and a permanent FDB entry sends frames for that MAC to the
//     remote VTEP's underlay address. No address is needed on the device.
//     Cost: 50 bytes a packet over an IPv4 underlay, 70 over IPv6.
//
// # Ownership, and what a State cannot take
//
// Routes carry protocol Protocol ("proto 80" in `ip route`), so Apply finds
// and removes its own routes and never touches anyone else's. In vxlan mode
// every permanent FDB and neighbour entry on pier.vxlan is Pier's, and so
// is the VXLAN guard in table inet pier (guard.go).
//
// A State comes from objects other hands write (Node objects), so Apply
// checks it against what the kernel says the node is: a route that would
// hold one of the node's addresses, overlap a network connected to one of
// its links (a storage network, docker0) or cover another route of the
// node is left out and reported (ErrConflict), never programmed. The only
// links exempt are Pier's own: Bridges (the pods' bridges) and pier.vxlan.
// A pod range's old gateway on one of Bridges is no conflict but a leftover
// (dropStaleGateways), and the only address Apply ever removes.
//
// In vxlan mode, two peers claiming one MAC or one underlay address are
// both left out: the FDB maps a MAC to one address, and picking one of
// them would let a Node object take another node's traffic.
//
// Apply is a reconcile, not a sequence of edits: it reads what the kernel
// holds, writes only what differs and deletes what is no longer wanted, so
// calling it again after a failure, a restart or a missed event converges.
package routing

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Routing modes.
const (
	ModeHostGW = "host-gw"
	ModeVXLAN  = "vxlan"
)

// Kernel names and numbers of the data plane.
const (
	// Protocol marks the routes Pier owns ("proto 80" in ip route).
	Protocol = 80
	// VXLANDevice is the vxlan mode's device.
	VXLANDevice = "pier.vxlan"
	VXLANID     = 1
	VXLANPort   = 8472
)

// Route is one remote pod range and its next hop: the remote node's
// underlay address in host-gw mode, a neighbour key on the vxlan device in
// vxlan mode. Dst and Via are of one family.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// Peer is a remote VTEP (vxlan mode): frames for MAC go to Underlay, and
// each of NextHops resolves to MAC on the vxlan device.
type Peer struct {
	Underlay netip.Addr
	MAC      net.HardwareAddr
	NextHops []netip.Addr
}

// State is what the node should hold. Peers matter in vxlan mode only.
type State struct {
	Routes []Route
	Peers  []Peer
}

// Programmer applies States to one network namespace. Its methods may be
// called concurrently (the route agent's reconciles and pierd's netfilter
// watcher); they take turns.
type Programmer struct {
	// Mode is ModeHostGW or ModeVXLAN.
	Mode string
	// VTEP is the local underlay address of the vxlan device (vxlan mode);
	// the device's MAC is MACFor(VTEP), which is what other nodes expect.
	VTEP netip.Addr
	// Bridges are Pier's bridges on the node (the pods' bridges): the only
	// links whose addresses a route may cover, and from which a pod
	// range's stale gateway is removed (package doc).
	Bridges []string
	// NetNS is the path of the node's network namespace when it is not the
	// caller's (tests); "": the calling thread's. Routes, links and the
	// VXLAN guard's nftables objects all go there.
	NetNS string
	Log   *slog.Logger

	mu sync.Mutex // serialises Apply and RestoreGuard; guards guardPeers
	// guardPeers are the peers of the last Apply (vxlan mode), which
	// RestoreGuard puts back after a flushed table.
	guardPeers []Peer
}

// ErrConflict marks routes Apply left out because they would take one of
// the node's own addresses, networks or routes (package doc).
var ErrConflict = errors.New("conflicts with the node's own networks")

// MACFor derives a vxlan MAC from a node's underlay address: locally
// administered (0a:58, as CNI plugins do for container MACs) and stable
// across restarts, so remote FDB entries stay right when pierd restarts.
func MACFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As16()
	return net.HardwareAddr{0x0a, 0x58, b[12], b[13], b[14], b[15]}
}

// handle opens a netlink handle in the node's namespace.
func (p *Programmer) handle() (*netlink.Handle, func(), error) {
	if p.NetNS == "" {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, nil, fmt.Errorf("netlink: %w", err)
		}
		return h, h.Close, nil
	}
	ns, err := netns.GetFromPath(p.NetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("open network namespace %s: %w", p.NetNS, err)
	}
	defer ns.Close() // the handle's sockets keep the namespace
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("netlink in %s: %w", p.NetNS, err)
	}
	return h, h.Close, nil
}

func (p *Programmer) log() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// Apply makes the kernel hold s (package doc). Every difference it cannot
// fix, and every route or peer it leaves out, is in the returned error;
// the rest is done regardless.
func (p *Programmer) Apply(s State) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	h, done, err := p.handle()
	if err != nil {
		return err
	}
	defer done()
	var link netlink.Link
	var underlay string
	if p.Mode == ModeVXLAN {
		if link, underlay, err = p.ensureVXLAN(h); err != nil {
			return err
		}
	}
	own, err := p.ownNetworks(h)
	if err != nil {
		return err
	}
	want, refused := p.wantedRoutes(s.Routes, link, own)
	errs := []error{refused}
	if link != nil {
		peers, conflicts := usablePeers(s.Peers)
		errs = append(errs, conflicts, p.reconcileFDB(h, link, peers), p.reconcileNeighbours(h, link, peers),
			p.reconcileGuard(underlay, peers))
		p.guardPeers = peers
	}
	errs = append(errs, p.dropStaleGateways(h, want))
	errs = append(errs, p.reconcileRoutes(h, want))
	return errors.Join(errs...)
}

// EnsureDevice creates (or checks) the vxlan device without touching
// routes, so a caller can publish its MAC before any peer knows it. It
// returns the device's MAC and MTU; in host-gw mode it does nothing.
func (p *Programmer) EnsureDevice() (net.HardwareAddr, int, error) {
	if p.Mode != ModeVXLAN {
		return nil, 0, nil
	}
	h, done, err := p.handle()
	if err != nil {
		return nil, 0, err
	}
	defer done()
	p.mu.Lock()
	defer p.mu.Unlock()
	l, _, err := p.ensureVXLAN(h)
	if err != nil {
		return nil, 0, err
	}
	return l.Attrs().HardwareAddr, l.Attrs().MTU, nil
}

// wantedRoutes turns s's routes into kernel routes keyed by destination.
// A route whose next hop is of another family than its range cannot be
// programmed (the kernel refuses an IPv6 route via an IPv4 gateway): it is
// logged and left out. A route that would take one of the node's own
// addresses, networks or routes (own) is left out and returned in the
// error.
func (p *Programmer) wantedRoutes(rs []Route, vx netlink.Link, own ownNetworks) (map[netip.Prefix]*netlink.Route, error) {
	want := map[netip.Prefix]*netlink.Route{}
	var refused []error
	for _, r := range rs {
		dst := r.Dst.Masked()
		if !dst.IsValid() || !r.Via.IsValid() || dst.Addr().Is4() != r.Via.Unmap().Is4() {
			p.log().Warn("route left out: next hop of another family", "dst", r.Dst, "via", r.Via)
			continue
		}
		if why := own.conflict(dst); why != "" {
			refused = append(refused, fmt.Errorf("route %s via %s left out: it %s: %w", dst, r.Via, why, ErrConflict))
			continue
		}
		nr := &netlink.Route{Dst: IPNet(dst), Gw: r.Via.Unmap().AsSlice(), Protocol: Protocol, Table: unix.RT_TABLE_MAIN}
		if vx != nil {
			nr.LinkIndex = vx.Attrs().Index
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		want[dst] = nr
	}
	return want, errors.Join(refused...)
}

// reconcileRoutes replaces the routes that differ from want and deletes
// Pier's routes want does not hold.
func (p *Programmer) reconcileRoutes(h *netlink.Handle, want map[netip.Prefix]*netlink.Route) error {
	var errs []error
	have := map[netip.Prefix]netlink.Route{}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := h.RouteListFiltered(family, &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes: %w", err))
			continue
		}
		for _, r := range rs {
			dst, ok := prefixOf(r.Dst)
			if !ok {
				continue
			}
			if w := want[dst]; w == nil {
				if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete route %s: %w", dst, err))
				} else {
					p.log().Debug("route removed", "dst", dst, "via", r.Gw)
				}
				continue
			}
			have[dst] = r
		}
	}
	for dst, w := range want {
		if r, ok := have[dst]; ok && sameRoute(r, w) {
			continue
		}
		if err := h.RouteReplace(w); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", dst, w.Gw, err))
			continue
		}
		p.log().Debug("route set", "dst", dst, "via", w.Gw)
	}
	return errors.Join(errs...)
}

// sameRoute compares what Apply sets: the next hop, and in vxlan mode the
// device and onlink.
func sameRoute(have netlink.Route, want *netlink.Route) bool {
	if !have.Gw.Equal(want.Gw) {
		return false
	}
	if want.LinkIndex != 0 && (have.LinkIndex != want.LinkIndex || have.Flags&int(netlink.FLAG_ONLINK) == 0) {
		return false
	}
	return true
}

// IPNet converts a prefix for netlink.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits).Masked(), true
}

// dropStaleGateways removes from Pier's bridges a pod range's gateway
// (the range's first host address, which the plugin puts on the bridge)
// when that range is now routed to another node: the node held the range
// once (a block given back, a Node re-created with another range), and the
// connected route the address brings would capture the traffic that now
// belongs to the other node. Other links are never touched: an address
// there is the node's own network, and a route over it was refused.
func (p *Programmer) dropStaleGateways(h *netlink.Handle, want map[netip.Prefix]*netlink.Route) error {
	if len(want) == 0 {
		return nil
	}
	var errs []error
	for _, name := range p.Bridges {
		l, err := h.LinkByName(name)
		if err != nil {
			continue // no such bridge (yet): nothing on it to remove
		}
		if l.Type() != "bridge" {
			errs = append(errs, fmt.Errorf("%s is a %s, not a bridge: no address of it is removed", name, l.Type()))
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			errs = append(errs, fmt.Errorf("list addresses of %s: %w", name, err))
			continue
		}
		for _, a := range addrs {
			pfx, ok := prefixOf(a.IPNet)
			ip, _ := netip.AddrFromSlice(a.IP)
			if !ok || want[pfx] == nil || ip.Unmap() != pfx.Addr().Next() {
				continue
			}
			p.log().Info("removing the gateway of a pod range now routed to another node", "range", pfx, "address", ip.Unmap(), "bridge", name)
			if err := h.AddrDel(l, &a); err != nil {
				errs = append(errs, fmt.Errorf("remove stale gateway %s from %s: %w", ip.Unmap(), name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// sortedAddrs returns the keys of m in order (stable logs and tests).
func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
