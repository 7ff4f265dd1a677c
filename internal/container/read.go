package container

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
)

// State is what CHECK and inspection tools read back from a
// container interface.
type State struct {
	Link   netlink.Link
	Addrs  []netip.Prefix // without IPv6 link-local
	Routes []Route        // main table, out of Link, not made by the kernel
}

// Read reads ifName in the container. A missing namespace or link
// yields an error wrapping ErrNotFound. Addresses and routes come from
// dumps of the container namespace (small) filtered here to the link.
func Read(netnsPath, ifName string) (*State, error) {
	c, err := open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ifName, err)
	}
	defer c.close()
	link, err := c.link(ifName)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ifName, err)
	}
	st := &State{Link: link}
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
		p, ok := links.PrefixOf(netlink.Addr{IPNet: r.Dst})
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

// addrs returns link's addresses without IPv6 link-local ones. The library
// dumps the namespace's addresses and keeps link's; in a container
// namespace that is a handful.
func (c *handle) addrs(link netlink.Link) ([]netip.Prefix, error) {
	list, err := c.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("read addresses of %s in %s: %w", link.Attrs().Name, c.path, err)
	}
	var out []netip.Prefix
	for _, a := range list {
		if p, ok := links.PrefixOf(a); ok && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p)
		}
	}
	return out, nil
}
