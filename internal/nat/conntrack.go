package nat

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ForgetUDPFlows deletes the conntrack entries of UDP flows to the given
// host ports (original direction).
//
// Why: a UDP client that sent to a host port before its mapping existed
// (or after it was removed) has a conntrack entry without DNAT, and as long
// as it keeps sending, the entry keeps its packets away from the mapping;
// TCP has no such problem, a new connection gets a new entry. The reference
// portmap plugin does the same, on ADD and on DEL.
//
// Cost: the kernel offers no filtered delete, and a dump walks the whole
// conntrack hash table, whatever it holds: about 9 ms for the 262144
// buckets here. So it runs only for mappings with UDP ports, and makes one
// dump of both families; only when that finds stale entries does it pay
// for the per-family delete (which dumps again). Callers log a failure
// rather than fail the ADD or DEL over it: the mapping itself is in place.
func ForgetUDPFlows(mappings []PortMapping) error {
	var filters []netlink.CustomConntrackFilter
	for _, m := range mappings {
		if m.Protocol != "udp" {
			continue
		}
		f := &netlink.ConntrackFilter{}
		if err := errors.Join(f.AddProtocol(unix.IPPROTO_UDP), f.AddPort(netlink.ConntrackOrigDstPort, m.HostPort)); err != nil {
			return fmt.Errorf("conntrack filter for udp/%d: %w", m.HostPort, err)
		}
		filters = append(filters, f)
	}
	if len(filters) == 0 {
		return nil
	}
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_UNSPEC)
	if err != nil {
		return fmt.Errorf("list conntrack entries: %w", err)
	}
	stale := map[netlink.InetFamily]bool{}
	for _, fl := range flows {
		for _, f := range filters {
			if f.MatchConntrackFlow(fl) {
				stale[netlink.InetFamily(fl.FamilyType)] = true
			}
		}
	}
	var errs []error
	for family := range stale {
		if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...); err != nil {
			errs = append(errs, fmt.Errorf("delete conntrack entries of udp host ports: %w", err))
		}
	}
	return errors.Join(errs...)
}
