package lint

import (
	"fmt"

	"github.com/pier-cni/pier/internal/firewall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NodeUplinks returns the links of the default routes (IPv4 and IPv6) of the
// network namespace the caller runs in, which for pierctl is the node's.
func NodeUplinks() ([]Uplink, error) {
	var ups []Uplink
	seen := map[int]bool{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			if idx == 0 || seen[idx] {
				continue
			}
			seen[idx] = true
			l, err := netlink.LinkByIndex(idx)
			if err != nil {
				return nil, fmt.Errorf("link %d of the default route: %w", idx, err)
			}
			ups = append(ups, Uplink{Name: l.Attrs().Name, MTU: l.Attrs().MTU})
		}
	}
	return ups, nil
}

// NodeHostFilters lists the places of the node's own filters (of the
// namespace the caller runs in) that drop the bridge's forwarded traffic.
func NodeHostFilters(bridge string) ([]firewall.Place, error) {
	return firewall.New().Scan(bridge)
}
