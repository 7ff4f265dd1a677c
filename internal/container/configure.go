package container

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
)

// Configure adds the addresses to ifName inside the container,
// brings it up and adds the routes. The runtime owns lo; it is left alone.
//
// With IPv6 addresses, accept_dad is set on the interface first: 0 unless
// cfg.EnableDAD (as the reference does), and the addresses carry
// IFA_F_NODAD too. With EnableDAD, accept_dad is forced to 1 (the namespace
// default might say 0) and the call returns once the kernel has finished DAD
// on every address. The sysctl costs a thread switch into the namespace,
// paid only by attachments with IPv6 addresses.
//
// Requests: one link lookup, one per address, one to set the link up, one
// per route.
func Configure(netnsPath, ifName string, cfg IPConfig) error {
	c, err := open(netnsPath)
	if err != nil {
		return fmt.Errorf("configure %s: %w", ifName, err)
	}
	defer c.close()
	link, err := c.link(ifName)
	if err != nil {
		return fmt.Errorf("configure %s: %w", ifName, err)
	}
	dad := cfg.EnableDAD && hasV6(cfg.Addrs)
	if hasV6(cfg.Addrs) {
		if err := c.sysctl("net/ipv6/conf/"+ifName+"/accept_dad", dadSetting(dad)); err != nil {
			return fmt.Errorf("configure %s: set accept_dad: %w", ifName, err)
		}
	}
	for _, a := range cfg.Addrs {
		if err := c.addAddr(link, a, cfg.EnableDAD); err != nil {
			return err
		}
	}
	if err := c.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up in %s: %w", ifName, netnsPath, err)
	}
	for _, r := range cfg.Routes {
		if err := c.h.RouteAdd(netlinkRoute(link.Attrs().Index, r)); err != nil {
			return fmt.Errorf("add route %s to %s in %s: %w", r, ifName, netnsPath, err)
		}
	}
	if dad {
		return c.waitDAD(link, cfg.Addrs, dadTimeout)
	}
	return nil
}

// addAddr adds a to link. If the kernel refuses an IPv6 address with EACCES,
// IPv6 is disabled on the interface (net.ipv6.conf.*.disable_ipv6, which
// some runtimes set as the namespace default); it is enabled, as the
// reference plugin does, and the address added again. Checking the sysctl
// up front would cost every ADD a namespace switch.
func (c *handle) addAddr(link netlink.Link, a netip.Prefix, dad bool) error {
	addr := &netlink.Addr{IPNet: links.IPNet(a)}
	if a.Addr().Is6() && !dad {
		addr.Flags = unix.IFA_F_NODAD
	}
	err := c.h.AddrAdd(link, addr)
	if errors.Is(err, unix.EACCES) && a.Addr().Is6() {
		name := link.Attrs().Name
		if serr := c.sysctl("net/ipv6/conf/"+name+"/disable_ipv6", "0"); serr != nil {
			return fmt.Errorf("add %s to %s in %s: %w (enable ipv6: %v)", a, name, c.path, err, serr)
		}
		err = c.h.AddrAdd(link, addr)
	}
	if err != nil {
		return fmt.Errorf("add %s to %s in %s: %w", a, link.Attrs().Name, c.path, err)
	}
	return nil
}

// netlinkRoute converts r to a main-table route out of link index.
func netlinkRoute(index int, r Route) *netlink.Route {
	nr := &netlink.Route{LinkIndex: index, Dst: links.IPNet(r.Dst.Masked())}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr
}

func (r Route) String() string {
	if r.Gw.IsValid() {
		return r.Dst.String() + " via " + r.Gw.String()
	}
	return r.Dst.String()
}

// dadSetting is the accept_dad value. With DAD off, the per-address NODAD
// flag alone is not enough: the link-local address still ran DAD, and until
// it finished (about a second) the container had not joined the
// solicited-node group of its global address and neighbours could not
// resolve it — ping6 right after ADD failed.
func dadSetting(on bool) string {
	if on {
		return "1"
	}
	return "0"
}

func hasV6(addrs []netip.Prefix) bool {
	for _, a := range addrs {
		if a.Addr().Is6() {
			return true
		}
	}
	return false
}
