// Package veth makes the veth pair that joins a container to the node's
// bridge: the container end created straight inside the container's
// namespace, the host end created enslaved to the bridge, up, with its alias
// and hairpin mode, in Pier's device group and with IPv6 off; and deletes
// the pair from the host side. The name of the host end is a function of
// the attachment (HostName), so DEL, CHECK and GC find it without state.
//
// The plugin runs in the node's namespace: the host end is created in the
// calling thread's namespace, the container end in the namespace given by
// path, through an fd in the creating request, so no thread switches
// namespaces.
package veth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
	pnetns "github.com/pier-cni/pier/internal/netns"
	"github.com/pier-cni/pier/internal/sysctl"
)

// ErrInterfaceExists is returned (wrapped) when a name the pair is about to
// take already exists.
var ErrInterfaceExists = errors.New("interface already exists")

// hostVethHashLen is how many hex digits of the hash HostName keeps:
// "veth" plus 11 digits fills IFNAMSIZ-1 (15 bytes). 44 bits keep the chance
// that two of 1000 attachments on a node collide near 3e-8; 8 digits (32
// bits) would make it about 1e-4, and a collision fails every retry of
// that ADD, because the name is a function of its arguments.
const hostVethHashLen = 11

// HostName returns the host-side veth name of the attachment
// (containerID, ifName): "veth" and the first hex digits of a SHA-256 of
// both. It is deterministic so DEL and GC find the link without state.
func HostName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return "veth" + hex.EncodeToString(sum[:])[:hostVethHashLen]
}

// Config describes the veth pair of one attachment.
type Config struct {
	ContainerNetNS string // path of the container's network namespace
	IfName         string // name inside the container (CNI_IFNAME)
	HostName       string // name on the node, normally HostName(...)
	MTU            int    // 0: kernel default
	// MAC of the container end; nil picks a random locally administered
	// address, as the kernel would.
	MAC     net.HardwareAddr
	Bridge  *netlink.Bridge
	Hairpin bool
	// Alias is set as IFLA_IFALIAS on the host end so tools can trace the
	// link to its attachment, e.g. "pier:<network>:<containerID>:<ifname>".
	Alias string
	// Group is the host end's device group (IFLA_GROUP), set in the
	// creating request; 0 leaves the default group. Pier's RA guard
	// recognises its host veths by it (see PortGroup).
	Group uint32
}

// PortGroup is the device group of Pier's host veths: "pier" in ASCII, a
// value no one picks by accident. nftables matches it (meta iifgroup) to
// drop router advertisements from containers without an element per
// container.
const PortGroup uint32 = 0x70696572

// Pair is a created pair. Host is read back from the kernel; Container is
// built from what was requested (name, MAC, MTU) and the peer index the
// kernel reported, which saves a lookup inside the container namespace.
type Pair struct {
	Host      netlink.Link
	Container netlink.Link
}

// Create creates the pair: the container end directly in the container
// namespace (no move afterwards, no thread switching namespaces), the host
// end enslaved to the bridge, in the group asked for, with IPv6 off, its
// alias and hairpin mode, and then up. If either name is taken the error
// wraps ErrInterfaceExists and nothing was created. On any later failure
// the pair is deleted before returning.
//
// Requests: the creation (the library then looks the link up and
// enslaves it), one each for the alias, hairpin and up, and a lookup for
// the host end's attributes (MAC, peer index). The same result from
// requests built by hand — created enslaved and echoed back, then alias,
// hairpin and up in one request — was as fast with no other port on the
// bridge and 0.6 ms slower with 1000 (the kernel took 0.5 ms for that
// combined request against 0.06 ms for the three simple ones), so the
// library's calls are used.
//
// Why IPv6 is off on the host end: a bridge port needs no address of its
// own, and with IPv6 on, every host veth adds an fe80::/64 route to the
// node's table and sends MLD reports and DAD probes that the bridge floods
// to every port. The kernel's IPv6 route lookup walks all same-prefix
// routes, so each such packet costs O(ports) and each new port O(ports²).
// With 1000 ports on the bridge (2 vCPUs), creating the pair and
// configuring the container took 5.8 ms with IPv6 on the host ends and
// 1.8 ms with it off. The switch is a sysctl of the node's namespace, the
// caller's own, so it is a file write and no namespace switch; it is done
// before the link is up so the port never sends anything.
func Create(cfg Config) (*Pair, error) {
	if cfg.HostName == "" || cfg.IfName == "" || cfg.Bridge == nil {
		return nil, errors.New("create veth: host name, interface name and bridge are required")
	}
	what := fmt.Sprintf("create veth %s (peer %s in %s)", cfg.HostName, cfg.IfName, cfg.ContainerNetNS)
	cns, err := pnetns.Open(cfg.ContainerNetNS)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer cns.Close()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("%s: open netlink: %w", what, err)
	}
	defer h.Close()
	mac := cfg.MAC
	if mac == nil {
		if mac, err = links.RandomMAC(); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	err = h.LinkAdd(newPair(cfg, cns, mac))
	if errors.Is(err, unix.EEXIST) {
		return nil, nameTaken(h, cfg, err)
	}
	var host netlink.Link
	if err == nil {
		host, err = setUpPort(h, cfg)
	}
	if err != nil {
		// The creation failed (no link of that name: it would have been
		// EEXIST) or a later step did; either way the name is ours to free.
		err = fmt.Errorf("%s: %w", what, err)
		return nil, errors.Join(err, links.DeleteByName(h, cfg.HostName))
	}
	return &Pair{Host: host, Container: containerEnd(cfg, host, mac)}, nil
}

// newPair describes the pair to create: host end enslaved to the bridge
// (the library enslaves it right after creating it) and down, peer with its
// name, MAC and MTU in the namespace cns.
func newPair(cfg Config, cns pnetns.NS, mac net.HardwareAddr) *netlink.Veth {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.MasterIndex, attrs.Group = cfg.HostName, cfg.MTU, cfg.Bridge.Index, cfg.Group
	return &netlink.Veth{LinkAttrs: attrs, PeerName: cfg.IfName, PeerHardwareAddr: mac, PeerNamespace: netlink.NsFd(int(cns.Fd()))}
}

// setUpPort turns IPv6 off on the new host end, sets its alias and hairpin
// mode, brings it up, and reads it back.
func setUpPort(h *netlink.Handle, cfg Config) (netlink.Link, error) {
	if err := sysctl.DisableIPv6(cfg.HostName); err != nil {
		return nil, err
	}
	port := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: cfg.HostName}}
	if cfg.Alias != "" {
		if err := h.LinkSetAlias(port, cfg.Alias); err != nil {
			return nil, fmt.Errorf("set alias %q: %w", cfg.Alias, err)
		}
	}
	if cfg.Hairpin {
		if err := h.LinkSetHairpin(port, true); err != nil {
			return nil, fmt.Errorf("set hairpin: %w", err)
		}
	}
	if err := h.LinkSetUp(port); err != nil {
		return nil, fmt.Errorf("set up: %w", err)
	}
	host, err := h.LinkByName(cfg.HostName)
	if err != nil {
		return nil, fmt.Errorf("read back: %w", err)
	}
	return host, nil
}

// nameTaken explains an EEXIST from creating the pair: the request creates
// exactly two names, so if the host name is free the container's was taken.
func nameTaken(h *netlink.Handle, cfg Config, cause error) error {
	if _, err := h.LinkByName(cfg.HostName); err == nil {
		return fmt.Errorf("create veth %s: %w: %s in the node namespace (%v)", cfg.HostName, ErrInterfaceExists, cfg.HostName, cause)
	}
	return fmt.Errorf("create veth %s: %w: %s in %s (%v)", cfg.HostName, ErrInterfaceExists, cfg.IfName, cfg.ContainerNetNS, cause)
}

// containerEnd describes the container side of a new pair without asking
// the container namespace: everything in it was either requested or is in
// the host end's attributes (IFLA_LINK holds the peer's index).
func containerEnd(cfg Config, host netlink.Link, mac net.HardwareAddr) netlink.Link {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.IfName
	attrs.Index = host.Attrs().ParentIndex
	attrs.HardwareAddr = mac
	attrs.MTU = host.Attrs().MTU // equal by construction: both set from cfg.MTU or both default
	return &netlink.Veth{LinkAttrs: attrs, PeerName: cfg.HostName}
}
