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
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	pnetns "github.com/pier-cni/pier/internal/netns"
	"github.com/pier-cni/pier/internal/rtnl"
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

// Create creates the pair in one request: the container end is created
// directly in the container namespace (no move afterwards) and the host end
// is created enslaved to the bridge. IPv6 is then disabled on the host end,
// and a second request brings it up and sets the alias and hairpin mode,
// which the kernel does not apply when it creates a link. If either name is
// taken the error wraps ErrInterfaceExists and nothing was created. On any
// later failure the pair is deleted before returning.
//
// Why IPv6 is off on the host end: a bridge port needs no address of its
// own, and with IPv6 on, every host veth adds an fe80::/64 route to the
// node's table and sends MLD reports and DAD probes that the bridge floods
// to every port. The kernel's IPv6 route lookup walks all same-prefix
// routes, so each such packet costs O(ports) and each new port O(ports²).
// With 1000 ports on the bridge (2 vCPUs), creating the pair and configuring the container
// took 5.8 ms with IPv6 on the host ends and 1.8 ms with it off. The switch
// is a sysctl of the node's namespace, the caller's own, so it is a file
// write and no namespace switch; it is done before the link is up so the
// port never sends anything.
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
	n, err := rtnl.OpenNode()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer n.Close()

	mac := cfg.MAC
	if mac == nil {
		if mac, err = rtnl.RandomMAC(); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	host, err := n.NewLinkEcho(request(n, cfg, int(cns), mac))
	if errors.Is(err, unix.EEXIST) {
		return nil, nameTaken(n, cfg, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if host == nil { // kernel too old to echo
		if host, err = n.H.LinkByName(cfg.HostName); err != nil {
			err = fmt.Errorf("%s: read back: %w", what, err)
			return nil, errors.Join(err, rtnl.DeleteByName(n.H, cfg.HostName))
		}
	}
	if err := sysctl.DisableIPv6(cfg.HostName); err != nil {
		err = fmt.Errorf("%s: %w", what, err)
		return nil, errors.Join(err, rtnl.DeleteByName(n.H, cfg.HostName))
	}
	if err := setPort(n, host, cfg); err != nil {
		return nil, errors.Join(err, rtnl.DeleteByName(n.H, cfg.HostName))
	}
	return &Pair{Host: host, Container: containerEnd(cfg, host, mac)}, nil
}

// request builds the RTM_NEWLINK that creates the pair: host end
// enslaved (the kernel applies IFLA_MASTER at creation) and down, peer with
// its name, MAC and MTU in the namespace given by nsFd.
func request(n *rtnl.Node, cfg Config, nsFd int, mac net.HardwareAddr) *nl.NetlinkRequest {
	req := n.Request(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(cfg.HostName)))
	req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(cfg.Bridge.Index))))
	if cfg.Group != 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(cfg.Group)))
	}
	if cfg.MTU > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(cfg.MTU))))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(cfg.IfName))
	peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(mac))
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(nsFd)))
	if cfg.MTU > 0 {
		peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(cfg.MTU)))
	}
	req.AddData(info)
	return req
}

// setPort brings the new host end up and sets its alias and hairpin mode,
// in one RTM_NEWLINK on the existing link: flags and IFLA_IFALIAS are
// applied by setlink, and bridge-port options travel as
// IFLA_INFO_SLAVE_DATA, which the bridge (the master) applies.
func setPort(n *rtnl.Node, host netlink.Link, cfg Config) error {
	req := n.Request(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(host.Attrs().Index)
	msg.Change, msg.Flags = unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	if cfg.Alias != "" {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(cfg.Alias)))
	}
	if cfg.Hairpin {
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_SLAVE_DATA, nil).AddRtAttr(nl.IFLA_BRPORT_MODE, []byte{1})
		req.AddData(info)
	}
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("set %s up (alias %q, hairpin %t): %w", cfg.HostName, cfg.Alias, cfg.Hairpin, err)
	}
	// The echo was taken before the kernel enslaved the link and before
	// this request; bring the returned attributes up to date.
	a := host.Attrs()
	a.MasterIndex, a.Alias = cfg.Bridge.Index, cfg.Alias
	a.Flags |= net.FlagUp
	a.RawFlags |= unix.IFF_UP
	return nil
}

// nameTaken explains an EEXIST from creating the pair: the request creates
// exactly two names, so if the host name is free the container's was taken.
func nameTaken(n *rtnl.Node, cfg Config, cause error) error {
	if _, err := n.H.LinkByName(cfg.HostName); err == nil {
		return fmt.Errorf("create veth %s: %w: %s in the node namespace (%v)", cfg.HostName, ErrInterfaceExists, cfg.HostName, cause)
	}
	return fmt.Errorf("create veth %s: %w: %s in %s (%v)", cfg.HostName, ErrInterfaceExists, cfg.IfName, cfg.ContainerNetNS, cause)
}

// containerEnd describes the container side of a new pair without asking
// the container namespace: everything in it was either requested or is in
// the host end's echo (IFLA_LINK holds the peer's index).
func containerEnd(cfg Config, host netlink.Link, mac net.HardwareAddr) netlink.Link {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.IfName
	attrs.Index = host.Attrs().ParentIndex
	attrs.HardwareAddr = mac
	attrs.MTU = host.Attrs().MTU // equal by construction: both set from cfg.MTU or both default
	return &netlink.Veth{LinkAttrs: attrs, PeerName: cfg.HostName}
}
