package bridge

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// # Design notes: bandwidth limits
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
// Requests: one for the ingress limit; five for the egress limit (create
// the ifb with an echo of its index, its tbf, set it up, the veth's ingress
// qdisc, the filter). None when the config sets no limit.

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

// ApplyLimits installs lim on the host veth and returns the ifb of the
// egress limit (nil without one). On failure it deletes the ifb it
// created; the veth's qdiscs go with the veth, which the caller's rollback
// deletes.
func ApplyLimits(hostVeth netlink.Link, lim Limits) (ifb netlink.Link, err error) {
	if lim.IngressRate == 0 && lim.EgressRate == 0 {
		return nil, nil
	}
	name := hostVeth.Attrs().Name
	n, err := openNode()
	if err != nil {
		return nil, fmt.Errorf("bandwidth limits on %s: %w", name, err)
	}
	defer n.close()
	if lim.IngressRate > 0 {
		if err := n.h.QdiscAdd(tbf(hostVeth.Attrs().Index, lim.IngressRate, lim.IngressBurst)); err != nil {
			return nil, fmt.Errorf("ingress limit (tbf on %s): %w", name, err)
		}
	}
	if lim.EgressRate == 0 {
		return nil, nil
	}
	if ifb, err = n.createIfb(IfbName(name), hostVeth.Attrs().MTU); err != nil {
		return nil, fmt.Errorf("egress limit of %s: %w", name, err)
	}
	if err := n.redirectToIfb(hostVeth, ifb, lim); err != nil {
		err = fmt.Errorf("egress limit of %s: %w", name, err)
		return nil, errors.Join(err, deleteByName(n.h, ifb.Attrs().Name))
	}
	return ifb, nil
}

// redirectToIfb shapes the ifb and sends the veth's incoming frames to it.
func (n *node) redirectToIfb(hostVeth, ifb netlink.Link, lim Limits) error {
	if err := n.h.QdiscAdd(tbf(ifb.Attrs().Index, lim.EgressRate, lim.EgressBurst)); err != nil {
		return fmt.Errorf("tbf on %s: %w", ifb.Attrs().Name, err)
	}
	if err := n.h.LinkSetUp(ifb); err != nil {
		return fmt.Errorf("set %s up: %w", ifb.Attrs().Name, err)
	}
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: hostVeth.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	if err := n.h.QdiscAdd(ingress); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", hostVeth.Attrs().Name, err)
	}
	redirect := &netlink.U32{ // no selector: matches every frame
		FilterAttrs: netlink.FilterAttrs{LinkIndex: hostVeth.Attrs().Index, Parent: ingress.Handle, Priority: 1, Protocol: unix.ETH_P_ALL},
		ClassId:     netlink.MakeHandle(1, 1),
		RedirIndex:  ifb.Attrs().Index, // mirred egress redirect
	}
	if err := n.h.FilterAdd(redirect); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", hostVeth.Attrs().Name, ifb.Attrs().Name, err)
	}
	return nil
}

// createIfb creates the ifb down, with the veth's MTU, and turns IPv6 off
// on it. An ifb of that name already there is a leftover: its veth, whose
// name the new veth now has, is gone, and a concurrent ADD of the same
// attachment would have failed creating the veth. It is replaced.
func (n *node) createIfb(name string, mtu int) (netlink.Link, error) {
	newIfb := func() *nl.NetlinkRequest {
		req := n.request(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
		if mtu > 0 {
			req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu))))
		}
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("ifb"))
		req.AddData(info)
		return req
	}
	l, err := n.newLinkEcho(newIfb())
	if errors.Is(err, unix.EEXIST) {
		if err = deleteByName(n.h, name); err == nil {
			l, err = n.newLinkEcho(newIfb())
		}
	}
	if err == nil && l == nil { // kernel too old to echo
		l, err = n.h.LinkByName(name)
	}
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	if err := disableIPv6(name); err != nil {
		return nil, errors.Join(err, deleteByName(n.h, name))
	}
	return l, nil
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

// RemoveLimits deletes the ifb of hostVeth; a missing one is fine (DEL
// policy). The veth's own qdiscs go with the veth.
func RemoveLimits(hostVeth string) error {
	return DeleteHostVeth(IfbName(hostVeth))
}

// CheckLimits reports how hostVeth's shaping differs from lim.
func CheckLimits(hostVeth string, lim Limits) []error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return []error{err}
	}
	defer h.Close()
	var problems []error
	check := func(dev string, rate, burst uint64, what string) {
		link, err := h.LinkByName(dev)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %s: %w", what, dev, err))
			return
		}
		qs, err := h.QdiscList(link)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: qdiscs of %s: %w", what, dev, err))
			return
		}
		want := tbf(link.Attrs().Index, rate, burst)
		for _, q := range qs {
			if t, ok := q.(*netlink.Tbf); ok && t.Parent == netlink.HANDLE_ROOT {
				if t.Rate != want.Rate || t.Buffer != want.Buffer || t.Limit != want.Limit {
					problems = append(problems, fmt.Errorf("%s: tbf on %s has rate %d B/s buffer %d limit %d, want %d %d %d", what, dev, t.Rate, t.Buffer, t.Limit, want.Rate, want.Buffer, want.Limit))
				}
				return
			}
		}
		problems = append(problems, fmt.Errorf("%s: no tbf qdisc on %s", what, dev))
	}
	if lim.IngressRate > 0 {
		check(hostVeth, lim.IngressRate, lim.IngressBurst, "ingress limit")
	}
	if lim.EgressRate > 0 {
		check(IfbName(hostVeth), lim.EgressRate, lim.EgressBurst, "egress limit")
	}
	return problems
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
