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

func (p *Programmer) mac() net.HardwareAddr {
	if p.MAC != nil {
		return p.MAC
	}
	return MACFor(p.VTEP)
}

// ensureVXLAN creates pier.vxlan on the link holding the VTEP address, or
// checks the existing one; a device of another VNI, source address or MAC
// is replaced (its remote entries come back with the next Apply).
func (p *Programmer) ensureVXLAN(h *netlink.Handle) (netlink.Link, error) {
	if !p.VTEP.IsValid() {
		return nil, errors.New("vxlan mode needs the node's underlay address (VTEP)")
	}
	vtep := p.VTEP.Unmap()
	if l, err := h.LinkByName(VXLANDevice); err == nil {
		if v, ok := l.(*netlink.Vxlan); ok && v.VxlanId == VXLANID && v.SrcAddr.Equal(vtep.AsSlice()) &&
			bytes.Equal(v.HardwareAddr, p.mac()) {
			if l.Attrs().Flags&net.FlagUp == 0 {
				return l, h.LinkSetUp(l)
			}
			return l, nil
		}
		p.log().Info("replacing an incompatible vxlan device", "device", VXLANDevice)
		if err := h.LinkDel(l); err != nil {
			return nil, fmt.Errorf("replace incompatible %s: %w", VXLANDevice, err)
		}
	}
	under, mtu, err := linkWith(h, vtep)
	if err != nil {
		return nil, err
	}
	over := overhead4
	if vtep.Is6() {
		over = overhead6
	}
	v := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, HardwareAddr: p.mac(), MTU: mtu - over},
		VxlanId:   VXLANID, VtepDevIndex: under, SrcAddr: vtep.AsSlice(), Port: VXLANPort, Learning: false,
	}
	if err := h.LinkAdd(v); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create %s: %w", VXLANDevice, err)
	}
	l, err := h.LinkByName(VXLANDevice)
	if err != nil {
		return nil, err
	}
	p.log().Info("vxlan device ready", "device", VXLANDevice, "vtep", vtep, "mac", l.Attrs().HardwareAddr.String(), "mtu", l.Attrs().MTU)
	return l, h.LinkSetUp(l)
}

// linkWith returns the index and MTU of the link holding ip.
func linkWith(h *netlink.Handle, ip netip.Addr) (int, int, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, 0, err
	}
	for _, a := range addrs {
		if x, ok := netip.AddrFromSlice(a.IP); ok && x.Unmap() == ip {
			l, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, 0, err
			}
			return a.LinkIndex, l.Attrs().MTU, nil
		}
	}
	return 0, 0, fmt.Errorf("no link holds the node's underlay address %s", ip)
}

// reconcileFDB keeps one permanent FDB entry per peer (its MAC → its
// underlay address) and removes the others. Two peers claiming one MAC is
// a conflict no FDB can express: the first in order wins, and it is logged.
func (p *Programmer) reconcileFDB(h *netlink.Handle, vx netlink.Link, peers []Peer) error {
	want := map[string]netip.Addr{}
	macs := map[string]net.HardwareAddr{}
	for _, pr := range peers {
		if !pr.Underlay.IsValid() || len(pr.MAC) != 6 {
			p.log().Warn("vxlan peer left out: no underlay address or MAC", "underlay", pr.Underlay, "mac", pr.MAC)
			continue
		}
		k := pr.MAC.String()
		if prev, dup := want[k]; dup && prev != pr.Underlay.Unmap() {
			p.log().Warn("two vxlan peers claim one MAC; keeping the first", "mac", k, "kept", prev, "left out", pr.Underlay)
			continue
		}
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
// every peer (the next hop → the peer's MAC) and removes the others.
func (p *Programmer) reconcileNeighbours(h *netlink.Handle, vx netlink.Link, peers []Peer) error {
	want := map[netip.Addr]net.HardwareAddr{}
	for _, pr := range peers {
		if len(pr.MAC) != 6 {
			continue
		}
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
	_, mtu, err := linkWith(h, p.VTEP.Unmap())
	if err != nil {
		p.log().Warn("cannot find the underlay's MTU", "err", err)
		return 0
	}
	return mtu
}
