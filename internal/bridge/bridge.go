// Package bridge is the kernel side of one Pier attachment: the node's bridge
// and its gateway addresses, the veth pair joining a container to it, the
// container's addresses and routes, the forwarding and hardening sysctls,
// and bandwidth shaping (shaping.go). Everything is done over netlink;
// nothing here execs `ip` or `tc`.
//
// Namespaces. The plugin runs in the node's network namespace, so functions
// that act on the node use the calling thread's namespace. Container
// namespaces are reached by path through netlink sockets bound to them
// (netlink.NewHandleAt), so no goroutine has to switch namespaces for
// ordinary work. Only container sysctls under /proc/sys/net need a thread
// inside the container namespace, and they are off the default path (see
// ConfigureContainer).
//
// Cost. ADD runs once per pod and its budget is a few milliseconds, so the
// default path makes no list or dump requests whose size grows with the
// number of pods: links are looked up by name, the host veth is created,
// enslaved and brought up in one request whose echo returns its attributes,
// and the bridge's own addresses are read with a dump the kernel filters by
// interface (strict checking), not a dump of every address on the node.
// Dumps that remain are named where they are made; they run inside a
// container namespace (a handful of entries) or on inspection paths.
//
// Errors wrap the netlink error with %w and name the object, so callers can
// test errors.Is(err, unix.EEXIST) and people can read what failed.
// ErrInterfaceExists and ErrNotFound mark the two outcomes callers branch on.
package bridge

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrInterfaceExists is returned (wrapped) when an interface that an
// attachment is about to create already exists.
var ErrInterfaceExists = errors.New("interface already exists")

// ErrNotFound is returned (wrapped) when a link or namespace that is read
// does not exist.
var ErrNotFound = errors.New("not found")

// BridgeConfig is the node bridge an attachment plugs into.
type BridgeConfig struct {
	Name string
	// MTU of the bridge; 0 leaves the kernel's default (1500) on a new
	// bridge and leaves an existing bridge's MTU alone.
	MTU     int
	Promisc bool
	// Gateways are assigned to the bridge (isGateway), e.g. 10.15.20.1/24.
	Gateways []netip.Prefix
	// ForceAddress replaces a different address of the same subnet on the
	// bridge instead of failing.
	ForceAddress bool
	// AutoMTU: with MTU 0, a bridge created now takes UplinkMTU's MTU,
	// so containers do not send packets the node's uplink cannot carry.
	AutoMTU bool
}

// EnsureBridge creates the bridge or reuses an existing one and makes it
// match cfg: MTU (if given), promiscuous mode (if asked), up, and holding
// every gateway address. It is idempotent and safe against concurrent
// plugin processes: losing the creation race (EEXIST) re-reads the link.
//
// Requests on the common path (bridge exists and is configured): one link
// lookup by name and, with gateways, one address dump filtered by the kernel
// to the bridge.
func EnsureBridge(cfg BridgeConfig) (*netlink.Bridge, error) {
	br, _, err := EnsureBridgeReport(cfg)
	return br, err
}

// EnsureBridgeReport is EnsureBridge that also reports whether this call
// created the bridge (and lost no creation race): node-wide setup that a
// new bridge needs once is done by its creator.
func EnsureBridgeReport(cfg BridgeConfig) (br *netlink.Bridge, created bool, err error) {
	if cfg.Name == "" {
		return nil, false, errors.New("ensure bridge: empty name")
	}
	n, err := openNode()
	if err != nil {
		return nil, false, fmt.Errorf("ensure bridge %s: %w", cfg.Name, err)
	}
	defer n.close()

	br, err = n.bridgeByName(cfg.Name)
	if errors.Is(err, ErrNotFound) {
		br, created, err = n.createBridge(cfg)
	}
	if err != nil {
		return nil, false, err
	}
	if err := n.reconcileBridge(br, cfg); err != nil {
		return nil, false, err
	}
	for _, gw := range cfg.Gateways {
		if err := n.ensureGateway(br, gw, cfg.ForceAddress); err != nil {
			return nil, false, err
		}
	}
	return br, created, nil
}

// bridgeByName reads the link called name and insists that it is a bridge.
func (n *node) bridgeByName(name string) (*netlink.Bridge, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		if isNotExist(err) {
			return nil, fmt.Errorf("bridge %s: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("link %s exists but is a %s, not a bridge", name, l.Type())
	}
	return br, nil
}

// createBridge creates the bridge up, with its MTU, and with a MAC address
// chosen here. Setting the MAC explicitly matters: a bridge whose address
// the kernel assigned takes the lowest MAC among its ports and changes it as
// veths come and go, which leaves containers with a stale ARP entry for the
// gateway; an explicitly set address is kept (the reference plugin pins it
// after the fact for the same reason).
func (n *node) createBridge(cfg BridgeConfig) (*netlink.Bridge, bool, error) {
	mac, err := randomMAC()
	if err != nil {
		return nil, false, fmt.Errorf("create bridge %s: %w", cfg.Name, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.Name
	attrs.MTU = cfg.MTU
	if cfg.MTU == 0 && cfg.AutoMTU {
		up, err := UplinkMTU()
		if err != nil {
			return nil, false, fmt.Errorf("create bridge %s: choose its MTU: %w", cfg.Name, err)
		}
		attrs.MTU = up.MTU
	}
	attrs.HardwareAddr = mac
	attrs.Flags = net.FlagUp
	err = n.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
	created := err == nil
	switch {
	case errors.Is(err, unix.EEXIST):
		// Another plugin process created it first (or a non-bridge link has
		// the name, which bridgeByName reports).
	case err != nil:
		return nil, false, fmt.Errorf("create bridge %s: %w", cfg.Name, err)
	default:
		// We own the routes on this bridge; router advertisements must not
		// add any. The creator writes it; DisableRA re-checks it for
		// bridges Pier did not create. A node without IPv6 has no such
		// file, which is fine.
		if err := writeSysctlIfNot("net/ipv6/conf/"+cfg.Name+"/accept_ra", "0"); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, false, fmt.Errorf("create bridge %s: %w", cfg.Name, err)
		}
	}
	br, err := n.bridgeByName(cfg.Name)
	return br, created, err
}

// reconcileBridge applies the parts of cfg an existing bridge may lack. Each
// request is made only when the link's attributes say it is needed.
func (n *node) reconcileBridge(br *netlink.Bridge, cfg BridgeConfig) error {
	if cfg.MTU > 0 && br.MTU != cfg.MTU {
		if err := n.h.LinkSetMTU(br, cfg.MTU); err != nil {
			return fmt.Errorf("set mtu %d on bridge %s: %w", cfg.MTU, br.Name, err)
		}
		br.MTU = cfg.MTU
	}
	if cfg.Promisc && br.RawFlags&unix.IFF_PROMISC == 0 {
		if err := n.h.SetPromiscOn(br); err != nil {
			return fmt.Errorf("set promisc on bridge %s: %w", br.Name, err)
		}
		br.Promisc = 1
	}
	if br.RawFlags&unix.IFF_UP == 0 {
		if err := n.h.LinkSetUp(br); err != nil {
			return fmt.Errorf("set bridge %s up: %w", br.Name, err)
		}
		br.Flags |= net.FlagUp
		br.RawFlags |= unix.IFF_UP
	}
	return nil
}

// ensureGateway makes gw an address of the bridge. An address already on
// the bridge whose subnet overlaps gw's but which is not gw itself is a
// conflict: an error naming both, or, with force, replaced by gw.
// Kernel-generated IPv6 link-local addresses are never conflicts.
//
// IPv6 gateways are added with IFA_F_NODAD so they are usable at once;
// duplicate detection for an address Pier assigns from its own pool would
// only delay the first container's traffic by a second or more.
func (n *node) ensureGateway(br *netlink.Bridge, gw netip.Prefix, force bool) error {
	have, err := n.addrsOf(br.Index, familyOf(gw.Addr()))
	if err != nil {
		return fmt.Errorf("read addresses of bridge %s: %w", br.Name, err)
	}
	for _, a := range have {
		if a.Prefix == gw {
			return nil
		}
	}
	for _, a := range have {
		if a.Prefix.Addr().IsLinkLocalUnicast() || !a.Prefix.Overlaps(gw) {
			continue
		}
		if !force {
			return fmt.Errorf("bridge %s already has address %s in the subnet of gateway %s (set forceAddress to replace it)", br.Name, a.Prefix, gw)
		}
		if err := n.h.AddrDel(br, &netlink.Addr{IPNet: ipNet(a.Prefix)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove address %s from bridge %s: %w", a.Prefix, br.Name, err)
		}
	}
	addr := &netlink.Addr{IPNet: ipNet(gw)}
	if gw.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	err = n.h.AddrAdd(br, addr)
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		// EEXIST: a concurrent plugin process added it meanwhile.
		return nil
	case errors.Is(err, unix.EACCES) && gw.Addr().Is6():
		// The node's policy, not ours to override: say where it is set.
		return fmt.Errorf("add gateway %s to bridge %s: %w (IPv6 is disabled: net.ipv6.conf.%s.disable_ipv6)", gw, br.Name, err, br.Name)
	default:
		return fmt.Errorf("add gateway %s to bridge %s: %w", gw, br.Name, err)
	}
}

// randomMAC returns a random unicast, locally administered MAC address, the
// kind the kernel picks for a new bridge or veth.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("random mac: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// ipNet converts p to the *net.IPNet netlink wants, keeping the host bits.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// familyOf returns the netlink address family of a.
func familyOf(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}
