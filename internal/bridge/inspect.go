package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// DeleteContainerLink deletes ifName inside the container (which removes
// the whole pair) and returns the addresses it had, without IPv6
// link-local ones, so the caller can release them.
//
// DEL policy for the link: a namespace that is gone (or is no longer a
// namespace) and a link that is gone mean the work is done, so both return
// (nil, nil); the runtime may call DEL any number of times. Only real
// failures to read or delete are returned.
func DeleteContainerLink(netnsPath, ifName string) ([]netip.Prefix, error) {
	c, err := openContainer(netnsPath)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", ifName, err)
	}
	defer c.close()
	link, err := c.link(ifName)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", ifName, err)
	}
	addrs, err := c.addrs(link)
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", ifName, err)
	}
	if err := c.h.LinkDel(link); err != nil && !isNotExist(err) {
		return nil, fmt.Errorf("delete %s in %s: %w", ifName, netnsPath, err)
	}
	return addrs, nil
}

// addrs returns link's addresses without IPv6 link-local ones. The library
// dumps the namespace's addresses and keeps link's; in a container
// namespace that is a handful.
func (c *container) addrs(link netlink.Link) ([]netip.Prefix, error) {
	list, err := c.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("read addresses of %s in %s: %w", link.Attrs().Name, c.path, err)
	}
	var out []netip.Prefix
	for _, a := range list {
		if p, ok := prefixOf(a); ok && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	return out, nil
}

// ContainerState is what CHECK and inspection tools read back from a
// container interface.
type ContainerState struct {
	Link   netlink.Link
	Addrs  []netip.Prefix // without IPv6 link-local
	Routes []Route        // main table, out of Link, not made by the kernel
}

// ReadContainer reads ifName in the container. A missing namespace or link
// yields an error wrapping ErrNotFound. Addresses and routes come from
// dumps of the container namespace (small) filtered here to the link.
func ReadContainer(netnsPath, ifName string) (*ContainerState, error) {
	c, err := openContainer(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ifName, err)
	}
	defer c.close()
	link, err := c.link(ifName)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ifName, err)
	}
	st := &ContainerState{Link: link}
	if st.Addrs, err = c.addrs(link); err != nil {
		return nil, fmt.Errorf("read %s: %w", ifName, err)
	}
	routes, err := c.h.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("read routes of %s in %s: %w", ifName, netnsPath, err)
	}
	for _, r := range routes {
		// Prefix routes of the addresses and IPv6 link-local/multicast
		// routes are the kernel's, not part of the configuration.
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		if rt, ok := routeOf(r); ok {
			st.Routes = append(st.Routes, rt)
		}
	}
	return st, nil
}

// routeOf converts a netlink route; a nil Dst is the default route.
func routeOf(r netlink.Route) (Route, bool) {
	var rt Route
	if r.Dst != nil {
		p, ok := prefixOf(netlink.Addr{IPNet: r.Dst})
		if !ok {
			return Route{}, false
		}
		rt.Dst = p
	} else if r.Family == unix.AF_INET6 {
		rt.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		rt.Gw = gw.Unmap()
	}
	return rt, true
}

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

// BridgePorts lists the links enslaved to bridgeName, for CHECK, GC and
// tools. It is a link dump, but one the kernel filters to the bridge's
// ports (IFLA_MASTER with strict checking); the library offers only an
// unfiltered one.
func BridgePorts(bridgeName string) ([]Port, error) {
	n, err := openNode()
	if err != nil {
		return nil, fmt.Errorf("ports of %s: %w", bridgeName, err)
	}
	defer n.close()
	br, err := n.bridgeByName(bridgeName)
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
