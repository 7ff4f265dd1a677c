package routing

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Encapsulation overhead: outer IP header, UDP, VXLAN and inner Ethernet.
const (
	overhead4 = 50
	overhead6 = 70
)

// ensureVXLAN creates pier.vxlan on the link holding the VTEP address, or
// checks the existing one; a device of another VNI, source address or MAC
// is replaced (its remote entries come back with the next Apply). It also
// returns the name of the underlay link, the one VXLAN arrives on.
func (p *Programmer) ensureVXLAN(h *netlink.Handle) (netlink.Link, string, error) {
	if !p.VTEP.IsValid() {
		return nil, "", errors.New("vxlan mode needs the node's underlay address (VTEP)")
	}
	vtep := p.VTEP.Unmap()
	under, err := linkWith(h, vtep)
	if err != nil {
		return nil, "", err
	}
	if l, err := h.LinkByName(VXLANDevice); err == nil {
		if v, ok := l.(*netlink.Vxlan); ok && v.VxlanId == VXLANID && v.SrcAddr.Equal(vtep.AsSlice()) &&
			bytes.Equal(v.HardwareAddr, MACFor(vtep)) {
			if l.Attrs().Flags&net.FlagUp == 0 {
				return l, under.Attrs().Name, h.LinkSetUp(l)
			}
			return l, under.Attrs().Name, nil
		}
		p.log().Info("replacing an incompatible vxlan device", "device", VXLANDevice)
		if err := h.LinkDel(l); err != nil {
			return nil, "", fmt.Errorf("replace incompatible %s: %w", VXLANDevice, err)
		}
	}
	over := overhead4
	if vtep.Is6() {
		over = overhead6
	}
	v := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, HardwareAddr: MACFor(vtep), MTU: under.Attrs().MTU - over},
		VxlanId:   VXLANID, VtepDevIndex: under.Attrs().Index, SrcAddr: vtep.AsSlice(), Port: VXLANPort, Learning: false,
	}
	if err := h.LinkAdd(v); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, "", fmt.Errorf("create %s: %w", VXLANDevice, err)
	}
	l, err := h.LinkByName(VXLANDevice)
	if err != nil {
		return nil, "", err
	}
	p.log().Info("vxlan device ready", "device", VXLANDevice, "vtep", vtep, "mac", l.Attrs().HardwareAddr.String(), "mtu", l.Attrs().MTU)
	return l, under.Attrs().Name, h.LinkSetUp(l)
}

// linkWith returns the link holding ip.
func linkWith(h *netlink.Handle, ip netip.Addr) (netlink.Link, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if x, ok := netip.AddrFromSlice(a.IP); ok && x.Unmap() == ip {
			return h.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("no link holds the node's underlay address %s", ip)
}

// usablePeers returns the peers that can be programmed. A peer without an
// underlay address or MAC is left out. Two peers claiming one MAC, or one
// underlay address, are a conflict no FDB can settle without handing one
// node's traffic to the other: both are left out, and the error names
// them.
func usablePeers(peers []Peer) ([]Peer, error) {
	byMAC := map[string][]netip.Addr{}
	byUnderlay := map[netip.Addr][]string{}
	for _, pr := range peers {
		if pr.Underlay.IsValid() && len(pr.MAC) == 6 {
			u := pr.Underlay.Unmap()
			byMAC[pr.MAC.String()] = append(byMAC[pr.MAC.String()], u)
			byUnderlay[u] = append(byUnderlay[u], pr.MAC.String())
		}
	}
	var out []Peer
	var errs []error
	for _, pr := range peers {
		switch u, mac := pr.Underlay.Unmap(), pr.MAC.String(); {
		case !pr.Underlay.IsValid() || len(pr.MAC) != 6:
			errs = append(errs, fmt.Errorf("vxlan peer %s (MAC %s) left out: it has no underlay address or MAC", pr.Underlay, pr.MAC))
		case len(byMAC[mac]) > 1:
			errs = append(errs, fmt.Errorf("vxlan peer %s left out: MAC %s is claimed by %v", u, mac, byMAC[mac]))
		case len(byUnderlay[u]) > 1:
			errs = append(errs, fmt.Errorf("vxlan peer %s left out: the address is claimed with MACs %v", u, byUnderlay[u]))
		default:
			out = append(out, pr)
		}
	}
	return out, errors.Join(errs...)
}

// reconcileFDB keeps one permanent FDB entry per peer (its MAC → its
// underlay address) and removes the others. peers are usable ones: no two
// share a MAC.
func (p *Programmer) reconcileFDB(h *netlink.Handle, vx netlink.Link, peers []Peer) error {
	want := map[string]netip.Addr{}
	macs := map[string]net.HardwareAddr{}
	for _, pr := range peers {
		k := pr.MAC.String()
		want[k], macs[k] = pr.Underlay.Unmap(), pr.MAC
	}
	have, err := h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list FDB of %s: %w", VXLANDevice, err)
	}
	var errs []error
	ok := map[string]bool{}
	for _, n := range have {
		ip, valid := netip.AddrFromSlice(n.IP)
		if !valid || n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		k := n.HardwareAddr.String()
		if dst, wanted := want[k]; wanted && dst == ip.Unmap() && !ok[k] {
			ok[k] = true
			continue
		}
		if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete FDB entry %s → %s: %w", k, ip.Unmap(), err))
		}
	}
	for k, dst := range want {
		if ok[k] {
			continue
		}
		fdb := &netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: dst.AsSlice(), HardwareAddr: macs[k]}
		if err := h.NeighSet(fdb); err != nil {
			errs = append(errs, fmt.Errorf("FDB entry %s → %s: %w", k, dst, err))
		}
	}
	return errors.Join(errs...)
}

// reconcileNeighbours keeps one permanent neighbour entry per next hop of
// every (usable) peer — the next hop → the peer's MAC — and removes the
// others.
func (p *Programmer) reconcileNeighbours(h *netlink.Handle, vx netlink.Link, peers []Peer) error {
	want := map[netip.Addr]net.HardwareAddr{}
	for _, pr := range peers {
		for _, nh := range pr.NextHops {
			if nh.IsValid() {
				want[nh.Unmap()] = pr.MAC
			}
		}
	}
	var errs []error
	ok := map[netip.Addr]bool{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := h.NeighList(vx.Attrs().Index, fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list neighbours of %s: %w", VXLANDevice, err))
			continue
		}
		for _, n := range have {
			ip, valid := netip.AddrFromSlice(n.IP)
			if !valid || n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			ip = ip.Unmap()
			if mac, wanted := want[ip]; wanted && bytes.Equal(mac, n.HardwareAddr) {
				ok[ip] = true
				continue
			}
			if _, wanted := want[ip]; wanted {
				continue // NeighSet below replaces it
			}
			if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete neighbour %s: %w", ip, err))
			}
		}
	}
	for _, ip := range sortedAddrs(want) {
		if ok[ip] {
			continue
		}
		family := netlink.FAMILY_V4
		if ip.Is6() {
			family = netlink.FAMILY_V6
		}
		nb := &netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: want[ip]}
		if err := h.NeighSet(nb); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s → %s: %w", ip, want[ip], err))
		}
	}
	return errors.Join(errs...)
}

// UnderlayMTU returns the MTU of the link holding the VTEP address (in
// host-gw mode, the node's underlay address): the pods' MTU in host-gw
// mode. 0 when no local link holds it.
func (p *Programmer) UnderlayMTU() int {
	if !p.VTEP.IsValid() {
		return 0
	}
	h, done, err := p.handle()
	if err != nil {
		return 0
	}
	defer done()
	l, err := linkWith(h, p.VTEP.Unmap())
	if err != nil {
		p.log().Warn("cannot find the underlay's MTU", "err", err)
		return 0
	}
	return l.Attrs().MTU
}
