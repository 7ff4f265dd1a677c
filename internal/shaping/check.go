package shaping

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Check reports how hostVeth's shaping differs from lim.
func Check(hostVeth string, lim Limits) []error {
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
