package bridge

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
)

// VxlanDevice is the device cluster mode's vxlan routes use (package
// cluster creates it); its MTU already leaves room for the encapsulation.
const VxlanDevice = "pier.vxlan"

// Uplink is what the MTU of a new bridge was taken from.
type Uplink struct {
	Name string // the link
	MTU  int
	// Why says how it was chosen, for pierctl inspect.
	Why string
}

// UplinkMTU chooses the MTU for a bridge whose config sets none, as flannel
// does: the MTU of the interface of the node's default route (IPv4, else
// IPv6), or, in cluster mode with vxlan, of the vxlan device, whose MTU
// is the underlay's less the encapsulation, since containers' packets to
// other nodes go through it. Without either it returns no uplink (MTU 0:
// the kernel's default).
func UplinkMTU() (Uplink, error) {
	if l, err := netlink.LinkByName(VxlanDevice); err == nil {
		return Uplink{Name: VxlanDevice, MTU: l.Attrs().MTU, Why: "cluster mode's vxlan device " + VxlanDevice + " (the underlay's MTU less the vxlan overhead)"}, nil
	} else if !links.IsNotExist(err) {
		return Uplink{}, fmt.Errorf("look up %s: %w", VxlanDevice, err)
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return Uplink{}, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil && !r.Dst.IP.IsUnspecified() {
				continue
			}
			if ones, _ := dstMaskSize(r); ones != 0 {
				continue
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			l, err := netlink.LinkByIndex(idx)
			if err != nil {
				return Uplink{}, fmt.Errorf("look up the default route's link %d: %w", idx, err)
			}
			return Uplink{Name: l.Attrs().Name, MTU: l.Attrs().MTU, Why: "the interface of the node's default route, " + l.Attrs().Name}, nil
		}
	}
	return Uplink{}, nil // no default route: nothing to follow
}

func dstMaskSize(r netlink.Route) (int, int) {
	if r.Dst == nil {
		return 0, 0
	}
	return r.Dst.Mask.Size()
}
