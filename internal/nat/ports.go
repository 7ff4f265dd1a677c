package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/localnet"
)

// # Design notes: host ports (the portMappings capability)
//
// Host ports belong to the node, not to a network: one port can be mapped
// once per node whatever network its container is on. So their objects in
// table inet pier are node-wide (names chosen so that no network's object
// names, which all end in -postrouting, -masq4, -masq6 or -masq-<hash>,
// can equal them):
//
//	map   hostports4       inet_proto . inet_service : ipv4_addr . inet_service
//	map   hostports4-ip    ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//	set   hostports4-snat  ipv4_addr . inet_proto . inet_service . ipv4_addr   (flags interval)
//	(and the same three for IPv6)
//	chain hostports             ip6 daddr ::1 return
//	                            dnat ip  to ip  daddr . meta l4proto . th dport map @hostports4-ip
//	                            dnat ip  to meta l4proto . th dport map @hostports4
//	                            dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports6-ip
//	                            dnat ip6 to meta l4proto . th dport map @hostports6
//	chain hostports-prerouting  nat prerouting dstnat: fib daddr type local jump hostports
//	chain hostports-output      nat output dstnat:
//	                            ip saddr 127.0.0.0/8 ip daddr . meta l4proto . th dport @hostports4-ip ct mark set ct mark | 0x02000000
//	                            ip saddr 127.0.0.0/8 meta l4proto . th dport @hostports4 ct mark set ct mark | 0x02000000
//	                            fib daddr type local jump hostports
//	chain hostports-snat        nat postrouting srcnat:
//	                            ct status dnat ip  daddr . meta l4proto . th dport . ip  saddr @hostports4-snat masquerade
//	                            ct status dnat ip6 daddr . meta l4proto . th dport . ip6 saddr @hostports6-snat masquerade
//
// A mapping is one element per container address family: "tcp . 8080 :
// 10.15.20.2 . 80" in hostports4, or keyed by the host address too in
// hostports4-ip when hostIP restricts it (a hostIP mapping wins over a
// wildcard one for its address: its rule comes first). Traffic to any local
// address — arriving on any interface, or sent by the node itself, to its
// own addresses or to 127.0.0.1 — is matched by `fib daddr type local`.
// ADD adds elements, DEL deletes them; no rule is added per container.
//
// Conflicts: an element add with a key that exists pointing elsewhere fails
// with EEXIST, atomically with the rest of the batch, so "tcp/8080 is taken"
// needs no read on the fast path; the read comes after, to name the holder.
//
// The return path. The container's reply must pass back through the node's
// conntrack to be un-DNATed. It does for clients outside the bridge (the
// reply is routed through the node), so their source address is kept. Two
// cases need masquerade, both listed per mapping in hostports4-snat as
// (container address, protocol, container port, source range):
//   - hairpin: a client on the container's own subnet (the container itself,
//     or a neighbour on the bridge) would get the reply straight over the
//     bridge, from an address it did not talk to; source range = the subnet;
//   - localhost: the node connecting to 127.0.0.1:hostPort sends a packet
//     with source 127.0.0.1 out of the bridge, which no container can answer;
//     source range = 127.0.0.0/8. It also needs route_localnet=1 on the
//     bridge, which the plugin turns on only behind the localnet guard
//     (package localnet): that guard drops what the sysctl would
//     otherwise let in, packets to 127.0.0.0/8 arriving from containers
//     (CVE-2020-8558), but the replies to these connections, which the
//     rules below mark.
//     IPv6 has no route_localnet: ::1 is never mapped, so a local service
//     on [::1]:port stays reachable.
//
// `ct status dnat` restricts the masquerade to connections some DNAT
// redirected, and the key to this container's mapped port.

// Object names of the node-wide host port objects.
const (
	hostPortsChain  = "hostports"
	hostPortsPre    = "hostports-prerouting"
	hostPortsOutput = "hostports-output"
	hostPortsSNAT   = "hostports-snat"
)

// Batch-local ids of the host port maps (the masquerade maps use 1 and 2).
const (
	idPorts4 = 11 + iota
	idPorts4IP
	idPorts4SNAT
	idPorts6
	idPorts6IP
	idPorts6SNAT
)

// PortMapping is one host port redirected to one container address.
type PortMapping struct {
	Protocol string // "tcp", "udp" or "sctp"
	HostPort uint16
	// HostIP restricts the mapping to one local address. Invalid or
	// unspecified: every local address of ContainerIP's family.
	HostIP        netip.Addr
	ContainerIP   netip.Addr
	ContainerPort uint16
	// Subnet is the container's subnet: clients in it (hairpin) are
	// masqueraded so the reply comes back through the node.
	Subnet netip.Prefix
}

func (m PortMapping) String() string {
	host := "*"
	if m.restricted() {
		host = m.HostIP.String()
	}
	return fmt.Sprintf("%s %s:%d -> %s", m.Protocol, host, m.HostPort, netip.AddrPortFrom(m.ContainerIP, m.ContainerPort))
}

func (m PortMapping) restricted() bool { return m.HostIP.IsValid() && !m.HostIP.IsUnspecified() }

// ErrPortConflict marks (wrapped) a mapping whose host port, protocol and
// host address another container holds already.
var ErrPortConflict = errors.New("host port already mapped")

var protocols = map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

func protocolName(p byte) string {
	for name, n := range protocols {
		if n == p {
			return name
		}
	}
	return fmt.Sprintf("proto-%d", p)
}

func (m PortMapping) validate() error {
	ip := m.ContainerIP
	switch {
	case protocols[m.Protocol] == 0:
		return fmt.Errorf("port mapping %s: protocol %q: %w", m, m.Protocol, ErrInvalid)
	case m.HostPort == 0 || m.ContainerPort == 0:
		return fmt.Errorf("port mapping %s: port 0: %w", m, ErrInvalid)
	case !ip.IsValid() || ip.Zone() != "" || ip.Is4In6():
		return fmt.Errorf("port mapping %s: container address: %w", m, ErrInvalid)
	case m.HostIP.IsValid() && (m.HostIP.Is4() != ip.Is4() || m.HostIP.Zone() != ""):
		return fmt.Errorf("port mapping %s: host address of another family: %w", m, ErrInvalid)
	case !m.Subnet.IsValid() || m.Subnet.Addr().Is4() != ip.Is4() || !m.Subnet.Contains(ip):
		return fmt.Errorf("port mapping %s: subnet %s does not hold the container address: %w", m, m.Subnet, ErrInvalid)
	}
	return nil
}

// portFamily names the three sets of one address family.
type portFamily struct {
	family
	name                  string // "IPv4", "IPv6"
	any, byIP, snat       string
	anyID, byIPID, snatID uint32
	localhost             netip.Prefix // masqueraded source range of node-local clients; invalid for IPv6
}

var (
	ports4 = newPortFamily(ipv4, "IPv4", "hostports4", idPorts4, idPorts4IP, idPorts4SNAT, netip.MustParsePrefix("127.0.0.0/8"))
	ports6 = newPortFamily(ipv6, "IPv6", "hostports6", idPorts6, idPorts6IP, idPorts6SNAT, netip.Prefix{})
)

func newPortFamily(f family, name, base string, anyID, byIPID, snatID uint32, localhost netip.Prefix) portFamily {
	return portFamily{
		family: f, name: name, any: base, byIP: base + "-ip", snat: base + "-snat",
		anyID: anyID, byIPID: byIPID, snatID: snatID, localhost: localhost,
	}
}

func portFamilyOf(a netip.Addr) portFamily {
	if a.Is4() {
		return ports4
	}
	return ports6
}

// The sets. IDs let rules of the batch that creates them refer to them.
// Their types are built when needed, not at package init: every plugin
// start would pay for them.
func (pf portFamily) anyMap() *nftables.Set {
	return &nftables.Set{Table: pierTable(), Name: pf.any, ID: pf.anyID, IsMap: true, Concatenation: true,
		KeyType:      nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
		DataType:     nftables.MustConcatSetType(pf.keyType, nftables.TypeInetService),
		KeyByteOrder: binaryutil.BigEndian,
		Comment:      "pier: host ports on every local " + pf.name + " address"}
}

func (pf portFamily) byIPMap() *nftables.Set {
	return &nftables.Set{Table: pierTable(), Name: pf.byIP, ID: pf.byIPID, IsMap: true, Concatenation: true,
		KeyType:      nftables.MustConcatSetType(pf.keyType, nftables.TypeInetProto, nftables.TypeInetService),
		DataType:     nftables.MustConcatSetType(pf.keyType, nftables.TypeInetService),
		KeyByteOrder: binaryutil.BigEndian,
		Comment:      "pier: host ports on one " + pf.name + " address (hostIP)"}
}

func (pf portFamily) snatSet() *nftables.Set {
	return &nftables.Set{Table: pierTable(), Name: pf.snat, ID: pf.snatID, Interval: true, Concatenation: true,
		KeyType:      nftables.MustConcatSetType(pf.keyType, nftables.TypeInetProto, nftables.TypeInetService, pf.keyType),
		KeyByteOrder: binaryutil.BigEndian,
		Comment:      "pier: mapped ports whose clients are masqueraded (hairpin, localhost)"}
}

// Key encoding. Fields of a concatenation are padded to 4 bytes each.
func protoField(p byte) []byte { return []byte{p, 0, 0, 0} }

func portField(p uint16) []byte {
	b := []byte{0, 0, 0, 0}
	binary.BigEndian.PutUint16(b, p)
	return b
}

func concat(fields ...[]byte) []byte {
	var out []byte
	for _, f := range fields {
		out = append(out, f...)
	}
	return out
}

// portElems are the elements one mapping adds: its DNAT element and its
// masquerade ranges.
type portElems struct {
	dnat     *nftables.Set
	dnatElem nftables.SetElement
	snat     []nftables.SetElement
}

func (m PortMapping) elements(comment string) portElems {
	pf := portFamilyOf(m.ContainerIP)
	proto := protoField(protocols[m.Protocol])
	data := concat(m.ContainerIP.AsSlice(), portField(m.ContainerPort))
	e := portElems{dnat: pf.anyMap()}
	key := concat(proto, portField(m.HostPort))
	if m.restricted() {
		e.dnat = pf.byIPMap()
		key = concat(m.HostIP.AsSlice(), key)
	}
	e.dnatElem = nftables.SetElement{Key: key, Val: data, Comment: comment}
	sources := []netip.Prefix{m.Subnet.Masked()}
	if pf.localhost.IsValid() {
		sources = append(sources, pf.localhost)
	}
	for _, src := range sources {
		first, last := prefixRange(src)
		head := concat(m.ContainerIP.AsSlice(), proto, portField(m.ContainerPort))
		e.snat = append(e.snat, nftables.SetElement{Key: concat(head, first.AsSlice()), KeyEnd: concat(head, last.AsSlice()), Comment: comment})
	}
	return e
}

// prefixRange returns the first and last address of p.
func prefixRange(p netip.Prefix) (netip.Addr, netip.Addr) {
	first := p.Masked().Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	last, _ := netip.AddrFromSlice(b)
	return first, last
}

// Rules.

// fibLocalJump: "fib daddr type local jump hostports".
func fibLocalJump() rule {
	return rule{exprs: []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: hostPortsChain},
	}, text: "fib daddr type local jump " + hostPortsChain}
}

// v6LoopbackReturn: "ip6 daddr ::1 return"; see the notes on localhost.
func v6LoopbackReturn() rule {
	e := append(matchFamily(ipv6), daddrIn(ipv6, netip.MustParsePrefix("::1/128"))...)
	return rule{exprs: append(e, &expr.Verdict{Kind: expr.VerdictReturn}), text: "ip6 daddr ::1 return"}
}

// Registers: a concatenation is loaded field by field into consecutive
// 32-bit registers (reg 9 is the second 32-bit slot of reg 1); nat reads
// the address from reg 1 and the port from the slot after the address.
const (
	reg1      = 1
	reg32     = 8 // NFT_REG32_00
	thDportAt = 2 // destination port offset in the TCP, UDP and SCTP headers

	ctStatusDNAT = 1 << 5 // IPS_DST_NAT: the connection was DNATed
)

// dnatRule: "dnat ip to [ip daddr .] meta l4proto . th dport map @m".
func (pf portFamily) dnatRule(byIP bool) rule {
	e := matchFamily(pf.family)
	name, id, text := pf.any, pf.anyID, ""
	protoReg := uint32(reg1) // the key's first slot
	if byIP {
		name, id, text = pf.byIP, pf.byIPID, pf.nft+" daddr . "
		e = append(e, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: pf.daddrOff, Len: pf.addrLen})
		protoReg = reg32 + pf.addrLen/4 // the slot after the address
	}
	portReg := protoReg + 1
	if protoReg == reg1 {
		portReg = reg32 + 1
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: thDportAt, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: name, SetID: id, DestRegister: reg1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(pf.nfproto), RegAddrMin: reg1, RegProtoMin: reg32 + pf.addrLen/4},
	)
	return rule{exprs: e, text: fmt.Sprintf("dnat %s to %smeta l4proto . th dport map @%s", pf.nft, text, name)}
}

// snatRule: "ct status dnat ip daddr . meta l4proto . th dport . ip saddr
// @hostports4-snat masquerade".
func (pf portFamily) snatRule() rule {
	protoReg := reg32 + pf.addrLen/4
	e := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
	e = append(e, matchFamily(pf.family)...)
	e = append(e,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: pf.daddrOff, Len: pf.addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		// A no-op for one byte, but what nft emits for an integer field of
		// an interval set; kept so nft lists the rule as written here.
		&expr.Byteorder{SourceRegister: protoReg, DestRegister: protoReg, Op: expr.ByteorderHton, Len: 1, Size: 2},
		&expr.Payload{DestRegister: protoReg + 1, Base: expr.PayloadBaseTransportHeader, Offset: thDportAt, Len: 2},
		&expr.Payload{DestRegister: protoReg + 2, Base: expr.PayloadBaseNetworkHeader, Offset: pf.saddrOff, Len: pf.addrLen},
		&expr.Lookup{SourceRegister: reg1, SetName: pf.snat, SetID: pf.snatID},
		&expr.Masq{},
	)
	return rule{exprs: e, text: fmt.Sprintf("ct status dnat %s daddr . meta l4proto . th dport . %s saddr @%s masquerade", pf.nft, pf.nft, pf.snat),
		comment: "pier: hairpin and localhost clients of host ports"}
}

// localnetRule: `iifname != "lo" ip daddr 127.0.0.0/8 drop`.
func localnetRule() rule {
	lo := make([]byte, 16)
	copy(lo, "lo")
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: lo},
	}
	e = append(e, matchFamily(ipv4)...)
	e = append(e, daddrIn(ipv4, ports4.localhost)...)
	e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	return rule{exprs: e, text: `iifname != "lo" ip daddr 127.0.0.0/8 drop`,
		comment: "pier: route_localnet on bridges must not open 127.0.0.0/8 to containers"}
}

// The localnet guard on a bridge with route_localnet (package localnet)
// drops what arrives there for 127.0.0.0/8 unless it carries
// localnet.ReplyMark: the replies to the node's own connections from
// 127.0.0.0/8 to a host port, which conntrack readdresses to 127.0.0.1
// before the guard sees them when br_netfilter is on. Two rules mark
// them. In chain hostports-output, which sees only the first packet of
// each connection the node itself makes, the connection gets the bit in
// its conntrack mark when it comes from 127.0.0.0/8 to a mapped port:
// localnetConnMark. In chain localnet, every reply of such a connection
// gets the bit as its packet mark: localnetReplyMark. A container cannot
// have a connection marked: its packets never pass the output hook, and
// a connection it forges with a source in 127.0.0.0/8 (route_localnet
// lets such packets in) is not the node's. Both bits are or'ed in, so
// other users of the marks keep theirs.

// localnetConnMark: "ip saddr 127.0.0.0/8 [ip daddr .] meta l4proto . th
// dport @<map> ct mark set ct mark | <ReplyMark>".
func localnetConnMark(byIP bool) rule {
	pf := ports4
	e := append(matchFamily(pf.family), addrIn(pf.family, pf.saddrOff, pf.localhost)...)
	name, id, text := pf.any, pf.anyID, ""
	protoReg := uint32(reg1)
	if byIP {
		name, id, text = pf.byIP, pf.byIPID, "ip daddr . "
		e = append(e, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: pf.daddrOff, Len: pf.addrLen})
		protoReg = reg32 + pf.addrLen/4
	}
	portReg := protoReg + 1
	if protoReg == reg1 {
		portReg = reg32 + 1
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: thDportAt, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: name, SetID: id},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		orMark(),
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	)
	return rule{exprs: e, text: fmt.Sprintf("ip saddr 127.0.0.0/8 %smeta l4proto . th dport @%s ct mark set ct mark | 0x%08x", text, name, localnet.ReplyMark),
		comment: "pier: the node's own 127.0.0.1 clients of host ports"}
}

// localnetReplyMark: "ct direction reply ct mark & <ReplyMark> ==
// <ReplyMark> meta mark set meta mark | <ReplyMark>".
func localnetReplyMark() rule {
	mark := binaryutil.NativeEndian.PutUint32(localnet.ReplyMark)
	e := []expr.Any{
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}, // IP_CT_DIR_REPLY
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		orMark(),
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
	return rule{exprs: e, text: fmt.Sprintf("ct direction reply ct mark & 0x%08x == 0x%08x meta mark set meta mark | 0x%08x",
		localnet.ReplyMark, localnet.ReplyMark, localnet.ReplyMark),
		comment: "pier: replies to the node's own 127.0.0.1 clients of host ports pass the localnet guard"}
}

// orMark sets ReplyMark in register 1, as nft compiles "| mark".
func orMark() expr.Any {
	return &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
		Mask: binaryutil.NativeEndian.PutUint32(^uint32(localnet.ReplyMark)), Xor: binaryutil.NativeEndian.PutUint32(localnet.ReplyMark)}
}

// queuePortsSetup queues the node-wide host port objects, each chain
// flushed and refilled so the result is the same however often it runs.
func queuePortsSetup(c *nftables.Conn) error {
	c.AddTable(pierTable())
	for _, pf := range []portFamily{ports4, ports6} {
		for _, s := range []*nftables.Set{pf.anyMap(), pf.byIPMap(), pf.snatSet()} {
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("queue set %s: %w", s.Name, err)
			}
		}
	}
	chains := []struct {
		chain *nftables.Chain
		rules []rule
	}{
		{newRegularChain(hostPortsChain), []rule{v6LoopbackReturn(), ports4.dnatRule(true), ports4.dnatRule(false), ports6.dnatRule(true), ports6.dnatRule(false)}},
		{&nftables.Chain{Name: hostPortsPre, Table: pierTable(), Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest}, []rule{fibLocalJump()}},
		{&nftables.Chain{Name: hostPortsOutput, Table: pierTable(), Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest},
			[]rule{localnetConnMark(true), localnetConnMark(false), fibLocalJump()}},
		{&nftables.Chain{Name: hostPortsSNAT, Table: pierTable(), Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}, []rule{ports4.snatRule(), ports6.snatRule()}},
	}
	for _, ch := range chains {
		c.AddChain(ch.chain)
		c.FlushChain(ch.chain)
		for _, r := range ch.rules {
			c.AddRule(r.nftRule(ch.chain))
		}
	}
	return nil
}
