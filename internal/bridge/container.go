package bridge

import (
	"errors"
	"fmt"
	pnetns "github.com/pier-cni/pier/internal/netns"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Route is a route of the container interface. A zero Gw means the
// destination is on-link through the interface.
type Route struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

// ContainerIPConfig is what ConfigureContainer applies to the container end.
type ContainerIPConfig struct {
	Addrs  []netip.Prefix
	Routes []Route // 0.0.0.0/0 and ::/0 allowed
	// EnableDAD runs IPv6 duplicate address detection on the addresses
	// and waits for it to finish; otherwise they are usable at once.
	EnableDAD bool
}

// container is a container namespace opened by path, with a netlink handle
// bound to it, for the length of one exported call.
type container struct {
	ns   netns.NsHandle
	h    *netlink.Handle
	path string
}

// openContainer opens the namespace at path. A path that does not exist or
// is not a network namespace (a runtime's leftover file) yields ErrNotFound.
func openContainer(path string) (*container, error) {
	cns, err := pnetns.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, pnetns.ErrNotNetNS) {
			return nil, fmt.Errorf("netns %s: %w (%v)", path, ErrNotFound, err)
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	// The handle's socket is created inside the namespace (one setns there
	// and back, done by the library); every request then runs from here.
	h, err := netlink.NewHandleAt(cns, unix.NETLINK_ROUTE)
	if err != nil {
		cns.Close()
		return nil, fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	return &container{ns: cns, h: h, path: path}, nil
}

func (c *container) close() {
	c.h.Close()
	_ = c.ns.Close() // a read-only fd: closing cannot lose anything
}

// link looks ifName up in the container, wrapping ErrNotFound if absent.
func (c *container) link(ifName string) (netlink.Link, error) {
	l, err := c.h.LinkByName(ifName)
	if isNotExist(err) {
		return nil, fmt.Errorf("%s in %s: %w", ifName, c.path, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s in %s: %w", ifName, c.path, err)
	}
	return l, nil
}

// ConfigureContainer adds the addresses to ifName inside the container,
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
func ConfigureContainer(netnsPath, ifName string, cfg ContainerIPConfig) error {
	c, err := openContainer(netnsPath)
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
func (c *container) addAddr(link netlink.Link, a netip.Prefix, dad bool) error {
	addr := &netlink.Addr{IPNet: ipNet(a)}
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

// sysctl writes a sysctl of the container namespace; it runs on a thread
// switched into the namespace, because /proc/sys/net shows the sysctls of
// the reading thread's namespace.
func (c *container) sysctl(key, val string) error {
	return pnetns.Do(c.path, func() error { return writeSysctlIfNot(key, val) })
}

// netlinkRoute converts r to a main-table route out of link index.
func netlinkRoute(index int, r Route) *netlink.Route {
	nr := &netlink.Route{LinkIndex: index, Dst: ipNet(r.Dst.Masked())}
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

// dadTimeout bounds waitDAD. The kernel starts DAD after a random delay of
// up to rtr_solicit_delay (1 s by default) and then sends dad_transmits
// probes retrans_time apart (1 × 1 s by default), so DAD normally ends
// within 2 s; 5 s leaves room for a busy node without hanging the runtime.
const dadTimeout = 5 * time.Second

// waitDAD polls until none of want's IPv6 addresses is tentative on link,
// failing at once if one is a duplicate (IFA_F_DADFAILED) and after timeout
// otherwise. The poll interval starts at 10 ms and doubles up to 200 ms:
// quick when DAD is already done, at most ~10 polls for a typical 2 s DAD.
// Each poll is an address dump of the container namespace, which holds a
// few addresses, filtered here to the link; DAD is opt-in, so this is off
// the default path.
func (c *container) waitDAD(link netlink.Link, want []netip.Prefix, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		pending, err := c.tentative(link, want)
		if err != nil || len(pending) == 0 {
			return err
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%s in %s: addresses %v still tentative (duplicate address detection) after %s", link.Attrs().Name, c.path, pending, timeout)
		}
		time.Sleep(wait)
	}
}

// tentative returns which of want's IPv6 addresses are still tentative on
// link, or an error if DAD found one of them duplicated.
func (c *container) tentative(link netlink.Link, want []netip.Prefix) ([]netip.Prefix, error) {
	have, err := c.h.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return nil, fmt.Errorf("read addresses of %s in %s: %w", link.Attrs().Name, c.path, err)
	}
	var pending []netip.Prefix
	for _, a := range have {
		p, ok := prefixOf(a)
		if !ok || !contains(want, p) {
			continue
		}
		if a.Flags&unix.IFA_F_DADFAILED != 0 {
			return nil, fmt.Errorf("%s in %s: address %s is in use by another host (duplicate address detection failed)", link.Attrs().Name, c.path, p)
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			pending = append(pending, p)
		}
	}
	return pending, nil
}

func contains(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// prefixOf converts a netlink address to a prefix keeping the host bits.
func prefixOf(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}
