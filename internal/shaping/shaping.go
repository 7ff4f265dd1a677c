// Package shaping applies a container's bandwidth limits, as the reference
// bandwidth plugin does, with tc objects made over netlink: a token bucket
// on the host veth for traffic into the container, and for traffic out of
// it an ifb device the veth's ingress is redirected to. It also checks the
// limits, removes the ifb on DEL, and lists ifbs left without their veth
// for GC.
//
// # Design notes
//
// As the reference bandwidth plugin, with its units (bits per second and
// bits) and its token bucket parameters (latency 25 ms):
//
//   - into the container (ingressRate): a tbf qdisc at the root of the host
//     veth, whose egress is the container's ingress;
//   - out of the container (egressRate): an ingress qdisc on the host veth
//     whose one filter (u32, match all) redirects every frame to an ifb
//     device, and a tbf qdisc at the root of the ifb. tc can only shape on
//     egress; the ifb turns the veth's ingress into an egress.
//
// The ifb's name comes from the host veth's ("veth<hash>" → "pifb<hash>"),
// so DEL, CHECK and GC find it without state. Deleting the veth removes its
// qdiscs and filter; the ifb must be deleted on its own. IPv6 is turned off
// on the ifb before it goes up, for the host veths' reason (no per-device
// fe80::/64 route on the node).
//
// Requests: one for the ingress limit; six for the egress limit (create
// the ifb, which the library looks up for its index, its tbf, set it up,
// the veth's ingress qdisc, the filter). None when the config sets no
// limit.
package shaping

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
	"github.com/pier-cni/pier/internal/sysctl"
)

// Limits are a container's bandwidth limits: rates in bits per second,
// bursts in bits; a zero rate leaves that direction unlimited.
type Limits struct {
	IngressRate, IngressBurst uint64 // into the container
	EgressRate, EgressBurst   uint64 // out of the container
}

// tbfLatencyUsec is the longest a packet may wait in the bucket's queue,
// the reference's 25 ms; the queue limit is derived from it.
const tbfLatencyUsec = 25000

// IfbName returns the ifb device that shapes what leaves the container
// behind hostVeth.
func IfbName(hostVeth string) string {
	name := "pifb" + strings.TrimPrefix(hostVeth, "veth")
	return name[:min(len(name), unix.IFNAMSIZ-1)]
}

// Apply installs lim on the host veth and returns the ifb of the
// egress limit (nil without one). On failure it deletes the ifb it
// created; the veth's qdiscs go with the veth, which the caller's rollback
// deletes.
func Apply(hostVeth netlink.Link, lim Limits) (ifb netlink.Link, err error) {
	if lim.IngressRate == 0 && lim.EgressRate == 0 {
		return nil, nil
	}
	name := hostVeth.Attrs().Name
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("bandwidth limits on %s: open netlink: %w", name, err)
	}
	defer h.Close()
	if lim.IngressRate > 0 {
		if err := h.QdiscAdd(tbf(hostVeth.Attrs().Index, lim.IngressRate, lim.IngressBurst)); err != nil {
			return nil, fmt.Errorf("ingress limit (tbf on %s): %w", name, err)
		}
	}
	if lim.EgressRate == 0 {
		return nil, nil
	}
	if ifb, err = createIfb(h, IfbName(name), hostVeth.Attrs().MTU); err != nil {
		return nil, fmt.Errorf("egress limit of %s: %w", name, err)
	}
	if err := redirectToIfb(h, hostVeth, ifb, lim); err != nil {
		err = fmt.Errorf("egress limit of %s: %w", name, err)
		return nil, errors.Join(err, links.DeleteByName(h, ifb.Attrs().Name))
	}
	return ifb, nil
}

// redirectToIfb shapes the ifb and sends the veth's incoming frames to it.
func redirectToIfb(h *netlink.Handle, hostVeth, ifb netlink.Link, lim Limits) error {
	if err := h.QdiscAdd(tbf(ifb.Attrs().Index, lim.EgressRate, lim.EgressBurst)); err != nil {
		return fmt.Errorf("tbf on %s: %w", ifb.Attrs().Name, err)
	}
	if err := h.LinkSetUp(ifb); err != nil {
		return fmt.Errorf("set %s up: %w", ifb.Attrs().Name, err)
	}
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: hostVeth.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	if err := h.QdiscAdd(ingress); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", hostVeth.Attrs().Name, err)
	}
	redirect := &netlink.U32{ // no selector: matches every frame
		FilterAttrs: netlink.FilterAttrs{LinkIndex: hostVeth.Attrs().Index, Parent: ingress.Handle, Priority: 1, Protocol: unix.ETH_P_ALL},
		ClassId:     netlink.MakeHandle(1, 1),
		RedirIndex:  ifb.Attrs().Index, // mirred egress redirect
	}
	if err := h.FilterAdd(redirect); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", hostVeth.Attrs().Name, ifb.Attrs().Name, err)
	}
	return nil
}

// createIfb creates the ifb down, with the veth's MTU and a MAC chosen
// here (so the result can report it without reading the link back), and
// turns IPv6 off on it. An ifb of that name already there is a leftover:
// its veth, whose name the new veth now has, is gone, and a concurrent ADD
// of the same attachment would have failed creating the veth. It is
// replaced.
func createIfb(h *netlink.Handle, name string, mtu int) (netlink.Link, error) {
	mac, err := links.RandomMAC()
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.HardwareAddr = name, mtu, mac
	ifb := &netlink.Ifb{LinkAttrs: attrs}
	err = h.LinkAdd(ifb)
	if errors.Is(err, unix.EEXIST) {
		if err = links.DeleteByName(h, name); err == nil {
			ifb.Index = 0
			err = h.LinkAdd(ifb)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	if err := sysctl.DisableIPv6(name); err != nil {
		return nil, errors.Join(err, links.DeleteByName(h, name))
	}
	return ifb, nil
}

// tbf is the token bucket the reference installs for rate (bits/s) and
// burst (bits): buffer is the burst as transmission time at rate, in
// scheduler ticks; limit lets tbfLatencyUsec worth of bytes queue.
func tbf(linkIndex int, rate, burst uint64) *netlink.Tbf {
	rateBytes, burstBytes := rate/8, burst/8
	bufferUsec := float64(burstBytes) * 1e6 / float64(rateBytes)
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: linkIndex, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rateBytes,
		Buffer:     uint32(bufferUsec * netlink.TickInUsec()),
		Limit:      uint32(float64(rateBytes)*tbfLatencyUsec/1e6) + uint32(burstBytes),
	}
}
