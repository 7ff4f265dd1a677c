package bridge

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
)

// Port is a link enslaved to a bridge.
type Port struct {
	Name    string
	Index   int
	Alias   string
	Hairpin bool
	MTU     int
	MAC     net.HardwareAddr
	Up      bool // administratively up
}

// Ports lists the links enslaved to bridgeName, for CHECK, GC and
// tools. It is a link dump, but one the kernel filters to the bridge's
// ports (IFLA_MASTER with strict checking); the library offers only an
// unfiltered one.
func Ports(bridgeName string) ([]Port, error) {
	n, err := openNode()
	if err != nil {
		return nil, fmt.Errorf("ports of %s: %w", bridgeName, err)
	}
	defer n.close()
	br, err := byName(n, bridgeName)
	if err != nil {
		return nil, err
	}
	req := n.request(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(br.Index))))
	var ports []Port
	var perr error
	err = req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWLINK, func(m []byte) bool {
		l, err := netlink.LinkDeserialize(nil, m)
		if err != nil {
			perr = err
			return false
		}
		a := l.Attrs()
		if a.MasterIndex != br.Index { // kernels before 4.20 ignore the filter
			return true
		}
		ports = append(ports, Port{Name: a.Name, Index: a.Index, Alias: a.Alias,
			Hairpin: hairpinOf(m), MTU: a.MTU, MAC: a.HardwareAddr, Up: a.RawFlags&unix.IFF_UP != 0})
		return true
	})
	if err = errors.Join(err, perr); err != nil {
		return nil, fmt.Errorf("list ports of %s: %w", bridgeName, err)
	}
	return ports, nil
}

// hairpinOf reads IFLA_BRPORT_MODE from a link message's bridge-port data
// (IFLA_LINKINFO / IFLA_INFO_SLAVE_DATA), which the library does not parse
// for bridge ports.
func hairpinOf(m []byte) bool {
	attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
	if err != nil {
		return false
	}
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_LINKINFO {
			continue
		}
		info, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return false
		}
		for _, i := range info {
			if i.Attr.Type&^unix.NLA_F_NESTED != nl.IFLA_INFO_SLAVE_DATA {
				continue
			}
			port, err := nl.ParseRouteAttr(i.Value)
			if err != nil {
				return false
			}
			for _, p := range port {
				if p.Attr.Type&^unix.NLA_F_NESTED == nl.IFLA_BRPORT_MODE && len(p.Value) > 0 {
					return p.Value[0] == 1
				}
			}
		}
	}
	return false
}

// HasCarrier reports whether the bridge has carrier, which it has while at
// least one port forwards: a cheap hint that it still has containers (one
// link lookup, no dump). The flag is read from the link's flags
// (IFF_LOWER_UP), which the kernel updates as the last port goes, unlike
// the operational state, which follows later.
func HasCarrier(name string) (bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if links.IsNotExist(err) {
			return false, fmt.Errorf("bridge %s: %w", name, ErrNotFound)
		}
		return false, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	return l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0, nil
}
