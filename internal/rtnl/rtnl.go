// Package rtnl is the route-netlink plumbing shared by the packages that
// build one attachment's links (bridge, veth, container, shaping): the
// caller's namespace opened over netlink, the requests vishvananda/netlink
// cannot build (a link created and echoed back in one request, dumps the
// kernel filters by interface), and the conversions between netip and the
// library's net types.
//
// Errors wrap the netlink error with %w, so callers can test
// errors.Is(err, unix.EEXIST); ErrNotFound marks a link or namespace that
// is not there.
package rtnl

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned (wrapped) when a link or namespace that is read
// does not exist.
var ErrNotFound = errors.New("not found")

// Node is the caller's (the node's) namespace as seen over netlink, for the
// length of one exported call.
//
// H serves the requests the netlink library builds. raw is a second route
// socket for the few requests it cannot build: a veth created, enslaved and
// echoed back in one request, and dumps the kernel filters by interface.
// The library keeps its Handle's socket private, hence two sockets; each
// costs a socket and a bind, no namespace switch.
type Node struct {
	H   *netlink.Handle
	raw *nl.SocketHandle
}

// OpenNode opens both sockets in the calling thread's namespace.
func OpenNode() (*Node, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	// Strict checking makes the kernel honour the interface filter in dump
	// requests instead of returning every object of the namespace. Kernels
	// before 4.20 lack it; the dumps then filter on our side, slower but
	// right, so a failure here is ignored.
	_ = unix.SetsockoptInt(int(s.GetFd()), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
	// Extended acks add the kernel's reason to errors ("invalid MTU", …);
	// a kernel without them still reports the errno, so failure is ignored.
	_ = s.SetExtAck(true)
	return &Node{H: h, raw: &nl.SocketHandle{Socket: s}}, nil
}

// Close closes both sockets.
func (n *Node) Close() {
	n.raw.Close()
	n.H.Close()
}

// Request returns a route request that runs on n's raw socket.
func (n *Node) Request(typ, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(typ, flags)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: n.raw}
	return req
}

// IfAddr is one address of an interface as the kernel reports it.
type IfAddr struct {
	Prefix netip.Prefix
	Flags  uint32 // IFA_F_*
}

// AddrsOf returns the addresses of family on interface index. It is a dump,
// but one the kernel filters to that interface (strict checking), so its
// size does not grow with the number of veths on the node.
func (n *Node) AddrsOf(index, family int) ([]IfAddr, error) {
	req := n.Request(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	msg := nl.NewIfAddrmsg(family)
	msg.Index = uint32(index)
	req.AddData(msg)
	var out []IfAddr
	var perr error
	err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWADDR, func(m []byte) bool {
		a, idx, err := parseIfAddr(m)
		if err != nil {
			perr = err
			return false
		}
		if idx == index { // kernels before 4.20 ignore the filter
			out = append(out, a)
		}
		return true
	})
	return out, errors.Join(err, perr)
}

// parseIfAddr decodes an RTM_NEWADDR message: its address, flags and index.
func parseIfAddr(m []byte) (IfAddr, int, error) {
	msg := nl.DeserializeIfAddrmsg(m)
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return IfAddr{}, 0, fmt.Errorf("parse address: %w", err)
	}
	a := IfAddr{Flags: uint32(msg.Flags)}
	var local, address netip.Addr
	for _, at := range attrs {
		switch at.Attr.Type {
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(at.Value)
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(at.Value)
		case unix.IFA_FLAGS:
			if len(at.Value) == 4 {
				a.Flags = nl.NativeEndian().Uint32(at.Value)
			}
		}
	}
	// IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
	// point-to-point links and equal to it otherwise (IPv6 sends only it).
	if local.IsValid() {
		address = local
	}
	if !address.IsValid() {
		return IfAddr{}, 0, errors.New("parse address: no IFA_ADDRESS")
	}
	a.Prefix = netip.PrefixFrom(address.Unmap(), int(msg.Prefixlen))
	return a, int(msg.Index), nil
}

// NewLinkEcho sends an RTM_NEWLINK with NLM_F_ECHO and returns the link the
// kernel echoes back, so a new link's index and MAC need no second request.
// It reads up to the request's acknowledgement, not just to the echo: the
// kernel echoes the link when it is configured and can still fail (and
// remove it) afterwards, e.g. when enslaving it. Kernels before 6.1 do not
// echo new links; then it returns (nil, nil) and the caller looks it up.
func (n *Node) NewLinkEcho(req *nl.NetlinkRequest) (netlink.Link, error) {
	req.Flags |= unix.NLM_F_ECHO | unix.NLM_F_ACK
	s := n.raw.Socket
	if err := s.Send(req); err != nil {
		return nil, err
	}
	var echo []byte
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq {
				continue // a late reply to an earlier request on this socket
			}
			switch m.Header.Type {
			case unix.RTM_NEWLINK:
				echo = m.Data
			case unix.NLMSG_ERROR:
				if err := ackError(m); err != nil {
					return nil, err
				}
				if echo == nil {
					return nil, nil
				}
				return netlink.LinkDeserialize(nil, echo)
			}
		}
	}
}

// ackError decodes an NLMSG_ERROR message: nil for an acknowledgement, the
// errno otherwise, with the kernel's extended-ack text when it sent one.
func ackError(m syscall.NetlinkMessage) error {
	if len(m.Data) < 4 {
		return errors.New("short netlink error message")
	}
	errno := int32(nl.NativeEndian().Uint32(m.Data[:4]))
	if errno == 0 {
		return nil
	}
	err := error(syscall.Errno(-errno))
	rest := m.Data[4:]
	if m.Header.Flags&unix.NLM_F_ACK_TLVS == 0 || len(rest) < unix.SizeofNlMsghdr {
		return err
	}
	// Skip the request header the kernel copied back, then look for
	// NLMSGERR_ATTR_MSG among the attributes.
	hlen := int(nl.NativeEndian().Uint32(rest[:4]))
	if m.Header.Flags&unix.NLM_F_CAPPED != 0 {
		hlen = unix.SizeofNlMsghdr
	}
	if hlen > len(rest) {
		return err
	}
	attrs, perr := nl.ParseRouteAttr(rest[(hlen+3)&^3:])
	if perr != nil {
		return err
	}
	for _, a := range attrs {
		if a.Attr.Type == nl.NLMSGERR_ATTR_MSG {
			return fmt.Errorf("%w: %s", err, unix.ByteSliceToString(a.Value))
		}
	}
	return err
}

// RandomMAC returns a random unicast, locally administered MAC address, the
// kind the kernel picks for a new bridge or veth.
func RandomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("random mac: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

// IPNet converts p to the *net.IPNet netlink wants, keeping the host bits.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// FamilyOf returns the netlink address family of a.
func FamilyOf(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// PrefixOf converts a netlink address to a prefix keeping the host bits.
func PrefixOf(a netlink.Addr) (netip.Prefix, bool) {
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
