// Package bridge is the node's bridge of a Pier network: created or
// reused, kept up with its MTU and promiscuous mode, holding the gateway
// addresses (gateway.go), listing its ports (ports.go), hardened against
// router advertisements (hardening.go), and its MTU chosen from the node's
// uplink when the config sets none (uplink.go). The veth pairs that plug
// containers into it are package veth's; the container's side is package
// container's; bandwidth shaping is package shaping's.
//
// The plugin runs in the node's network namespace, so everything here acts
// on the calling thread's namespace, over netlink; nothing execs `ip`.
//
// Cost. ADD runs once per pod and its budget is a few milliseconds, so the
// default path makes no list or dump requests whose size grows with the
// number of pods: the bridge is looked up by name and its own addresses
// are read with a dump the kernel filters by interface (strict checking,
// see rtnl.go), not a dump of every address on the node. The port
// dump (Ports) is filtered by the kernel too and serves CHECK, GC and
// inspection, not ADD.
//
// Errors wrap the netlink error with %w and name the object, so callers can
// test errors.Is(err, unix.EEXIST) and people can read what failed.
// ErrNotFound marks a bridge that is not there.
package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
	"github.com/pier-cni/pier/internal/sysctl"
)

// ErrNotFound is returned (wrapped) when the bridge does not exist.
var ErrNotFound = links.ErrNotFound

// Config is the node bridge an attachment plugs into.
type Config struct {
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

// Ensure creates the bridge or reuses an existing one and makes it match
// cfg: MTU (if given), promiscuous mode (if asked), up, and holding every
// gateway address. It reports whether this call created the bridge (and
// lost no creation race): node-wide setup that a new bridge needs once is
// done by its creator. It is idempotent and safe against concurrent plugin
// processes: losing the creation race (EEXIST) re-reads the link.
//
// Requests on the common path (bridge exists and is configured): one link
// lookup by name and, with gateways, one address dump filtered by the kernel
// to the bridge.
func Ensure(cfg Config) (br *netlink.Bridge, created bool, err error) {
	if cfg.Name == "" {
		return nil, false, errors.New("ensure bridge: empty name")
	}
	n, err := openNode()
	if err != nil {
		return nil, false, fmt.Errorf("ensure bridge %s: %w", cfg.Name, err)
	}
	defer n.close()

	br, err = byName(n, cfg.Name)
	if errors.Is(err, ErrNotFound) {
		br, created, err = create(n, cfg)
	}
	if err != nil {
		return nil, false, err
	}
	if err := reconcile(n, br, cfg); err != nil {
		return nil, false, err
	}
	for _, gw := range cfg.Gateways {
		if err := ensureGateway(n, br, gw, cfg.ForceAddress); err != nil {
			return nil, false, err
		}
	}
	return br, created, nil
}

// byName reads the link called name and insists that it is a bridge.
func byName(n *node, name string) (*netlink.Bridge, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		if links.IsNotExist(err) {
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

// create creates the bridge up, with its MTU, and with a MAC address
// chosen here. Setting the MAC explicitly matters: a bridge whose address
// the kernel assigned takes the lowest MAC among its ports and changes it as
// veths come and go, which leaves containers with a stale ARP entry for the
// gateway; an explicitly set address is kept (the reference plugin pins it
// after the fact for the same reason).
func create(n *node, cfg Config) (*netlink.Bridge, bool, error) {
	mac, err := links.RandomMAC()
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
		// the name, which byName reports).
	case err != nil:
		return nil, false, fmt.Errorf("create bridge %s: %w", cfg.Name, err)
	default:
		// We own the routes on this bridge; router advertisements must not
		// add any. The creator writes it; DisableRA re-checks it for
		// bridges Pier did not create. A node without IPv6 has no such
		// file, which is fine.
		if err := sysctl.Ensure("net/ipv6/conf/"+cfg.Name+"/accept_ra", "0"); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, false, fmt.Errorf("create bridge %s: %w", cfg.Name, err)
		}
	}
	br, err := byName(n, cfg.Name)
	return br, created, err
}

// reconcile applies the parts of cfg an existing bridge may lack. Each
// request is made only when the link's attributes say it is needed.
func reconcile(n *node, br *netlink.Bridge, cfg Config) error {
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
