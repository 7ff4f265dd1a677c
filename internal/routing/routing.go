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
// # Ownership
//
// Routes carry protocol Protocol ("proto 80" in `ip route`), so Apply finds
// and removes its own routes and never touches anyone else's. In vxlan mode
// every permanent FDB and neighbour entry on pier.vxlan is Pier's.
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

	"github.com/vishvananda/netlink"
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

// Programmer applies States to one network namespace.
type Programmer struct {
	// Mode is ModeHostGW or ModeVXLAN.
	Mode string
	// VTEP is the local underlay address of the vxlan device (vxlan mode).
	VTEP netip.Addr
	// MAC is the vxlan device's address (vxlan mode); MACFor(VTEP) when nil.
	MAC net.HardwareAddr
	// Handle is the netlink handle to program with; nil: the calling
	// thread's namespace.
	Handle *netlink.Handle
	Log    *slog.Logger
}

// MACFor derives a vxlan MAC from a node's underlay address: locally
// administered (0a:58, as CNI plugins do for container MACs) and stable
// across restarts, so remote FDB entries stay right when pierd restarts.
func MACFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As16()
	return net.HardwareAddr{0x0a, 0x58, b[12], b[13], b[14], b[15]}
}

func (p *Programmer) handle() (*netlink.Handle, func(), error) {
	if p.Handle != nil {
		return p.Handle, func() {}, nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("netlink: %w", err)
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
// fix is in the returned error; the rest is fixed regardless.
func (p *Programmer) Apply(s State) error {
	h, done, err := p.handle()
	if err != nil {
		return err
	}
	defer done()
	var link netlink.Link
	if p.Mode == ModeVXLAN {
		if link, err = p.ensureVXLAN(h); err != nil {
			return err
		}
	}
	want := p.wantedRoutes(s.Routes, link)
	var errs []error
	if link != nil {
		errs = append(errs, p.reconcileFDB(h, link, s.Peers), p.reconcileNeighbours(h, link, s.Peers))
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
	l, err := p.ensureVXLAN(h)
	if err != nil {
		return nil, 0, err
	}
	return l.Attrs().HardwareAddr, l.Attrs().MTU, nil
}

// wantedRoutes turns s's routes into kernel routes keyed by destination.
// A route whose next hop is of another family than its range cannot be
// programmed (the kernel refuses an IPv6 route via an IPv4 gateway): it is
// logged and left out.
func (p *Programmer) wantedRoutes(rs []Route, vx netlink.Link) map[netip.Prefix]*netlink.Route {
	want := map[netip.Prefix]*netlink.Route{}
	for _, r := range rs {
		dst := r.Dst.Masked()
		if !dst.IsValid() || !r.Via.IsValid() || dst.Addr().Is4() != r.Via.Unmap().Is4() {
			p.log().Warn("route left out: next hop of another family", "dst", r.Dst, "via", r.Via)
			continue
		}
		nr := &netlink.Route{Dst: IPNet(dst), Gw: r.Via.Unmap().AsSlice(), Protocol: Protocol, Table: unix.RT_TABLE_MAIN}
		if vx != nil {
			nr.LinkIndex = vx.Attrs().Index
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		want[dst] = nr
	}
	return want
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

// dropStaleGateways removes from the node's links a pod range's gateway
// (the range's first host address, which the plugin puts on the bridge)
// when that range is now routed to another node: the node held the range
// once (a block given back, a Node re-created with another range), and the
// connected route the address brings would capture the traffic that now
// belongs to the other node.
func (p *Programmer) dropStaleGateways(h *netlink.Handle, want map[netip.Prefix]*netlink.Route) error {
	if len(want) == 0 {
		return nil
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	var errs []error
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		pfx, ok := prefixOf(a.IPNet)
		ip, _ := netip.AddrFromSlice(a.IP)
		if !ok || want[pfx] == nil || ip.Unmap() != pfx.Addr().Next() {
			continue
		}
		p.log().Info("removing the gateway of a pod range now routed to another node", "range", pfx, "address", ip.Unmap())
		l, err := h.LinkByIndex(a.LinkIndex)
		if err == nil {
			err = h.AddrDel(l, &a)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove stale gateway %s: %w", ip.Unmap(), err))
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
