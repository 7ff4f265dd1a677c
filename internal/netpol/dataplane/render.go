package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// family holds what differs between IPv4 and IPv6.
type family struct {
	v6       bool
	nft      string // "ip" or "ip6"
	nfproto  byte
	keyType  nftables.SetDatatype
	addrLen  uint32
	saddrOff uint32
	daddrOff uint32
}

var (
	ipv4     = family{nft: "ip", nfproto: unix.NFPROTO_IPV4, keyType: nftables.TypeIPAddr, addrLen: 4, saddrOff: 12, daddrOff: 16}
	ipv6     = family{v6: true, nft: "ip6", nfproto: unix.NFPROTO_IPV6, keyType: nftables.TypeIP6Addr, addrLen: 16, saddrOff: 8, daddrOff: 24}
	families = []family{ipv4, ipv6}
)

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// Registers: NFT_REG_1 is 16 bytes, the 32-bit slots 8..11; the fields of
// a concatenated key go into consecutive 32-bit slots.
const (
	reg1      = 1
	reg32     = 8
	thDportAt = 2
)

// rule is one rule as netlink expressions and as nft text, built side by
// side so they cannot drift.
type rule struct {
	exprs   []expr.Any
	text    []string
	comment string
}

func (r rule) String() string {
	s := strings.Join(r.text, " ")
	if r.comment != "" {
		s += fmt.Sprintf(" comment %q", r.comment)
	}
	return s
}

func (r rule) add(text string, e ...expr.Any) rule {
	r.exprs = append(append([]expr.Any(nil), r.exprs...), e...)
	r.text = append(append([]string(nil), r.text...), text)
	return r
}

func (r rule) nftRule(ch *nftables.Chain) *nftables.Rule {
	nr := &nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r.exprs}
	if r.comment != "" {
		nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.comment)
	}
	return nr
}

func matchFamily(r rule, f family) rule {
	return r.add("meta nfproto "+map[bool]string{false: "ipv4", true: "ipv6"}[f.v6],
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}})
}

// addrField is "saddr" or "daddr" with its offset.
type addrField struct {
	name string
	off  func(family) uint32
}

var (
	saddr = addrField{"saddr", func(f family) uint32 { return f.saddrOff }}
	daddr = addrField{"daddr", func(f family) uint32 { return f.daddrOff }}
)

func inSet(r rule, f family, a addrField, set string) rule {
	return r.add(fmt.Sprintf("%s %s @%s", f.nft, a.name, set),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: a.off(f), Len: f.addrLen},
		&expr.Lookup{SourceRegister: reg1, SetName: set})
}

// inPrefix matches addresses in p (neq: outside p) by masking the whole
// address, one shape for every prefix length.
func inPrefix(r rule, f family, a addrField, p netip.Prefix, neq bool) rule {
	mask := make([]byte, f.addrLen)
	for i := range p.Bits() {
		mask[i/8] |= 1 << (7 - i%8)
	}
	op, word := expr.CmpOpEq, ""
	if neq {
		op, word = expr.CmpOpNeq, "!= "
	}
	return r.add(fmt.Sprintf("%s %s %s%s", f.nft, a.name, word, p.Masked()),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: a.off(f), Len: f.addrLen},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: f.addrLen, Mask: mask, Xor: make([]byte, f.addrLen)},
		&expr.Cmp{Op: op, Register: reg1, Data: p.Masked().Addr().AsSlice()})
}

var protoNames = map[uint8]string{TCP: "tcp", UDP: "udp", SCTP: "sctp"}

// ProtoName is the protocol's nft keyword, or its number.
func ProtoName(p uint8) string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return fmt.Sprint(p)
}

func l4proto(r rule, p uint8) rule {
	return r.add("meta l4proto "+ProtoName(p),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}})
}

func dport(r rule, first, last uint16) rule {
	load := &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: thDportAt, Len: 2}
	if first == last {
		return r.add(fmt.Sprintf("th dport %d", first), load,
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(first)})
	}
	return r.add(fmt.Sprintf("th dport %d-%d", first, last), load,
		&expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: binaryutil.BigEndian.PutUint16(first), ToData: binaryutil.BigEndian.PutUint16(last)})
}

// namedPort: "ip daddr . meta l4proto . th dport @np-port-<name>-4".
func namedPort(r rule, f family, set string) rule {
	protoReg := reg32 + f.addrLen/4
	return r.add(fmt.Sprintf("%s daddr . meta l4proto . th dport @%s", f.nft, set),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: protoReg + 1, Base: expr.PayloadBaseTransportHeader, Offset: thDportAt, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: set})
}

func verdict(r rule, kind expr.VerdictKind, chain string) rule {
	text := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return"}[kind]
	switch kind {
	case expr.VerdictJump:
		text = "jump " + chain
	case expr.VerdictGoto:
		text = "goto " + chain
	}
	return r.add(text, &expr.Verdict{Kind: kind, Chain: chain})
}

// Base chain rules.

func ctEstablished() rule {
	return verdict(rule{}.add("ct state established,related",
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)}), expr.VerdictAccept, "")
}

// neighbourDiscovery accepts router solicitations and advertisements and
// neighbour solicitations and advertisements (ICMPv6 133-136) with hop
// limit 255: with br_netfilter, the ones neighbours on a bridge exchange
// pass the forward hook, untracked, and IPv6 between pods needs them
// whatever the policies. Only on-link ones: a receiver ignores neighbour
// discovery with any other hop limit, and a routed packet has lost one
// before the forward hook, so without the hop limit an egress-isolated
// pod could send these types anywhere (and an ingress-isolated one
// receive them from anywhere), data and all, to a raw socket.
// (Advertisements from containers are dropped earlier, at the bridge
// port.)
func neighbourDiscovery() rule {
	r := matchFamily(rule{}, ipv6)
	r = r.add("meta l4proto ipv6-icmp",
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_ICMPV6}})
	r = r.add("icmpv6 type 133-136",
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: []byte{133}, ToData: []byte{136}})
	r = r.add("ip6 hoplimit 255",
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: hopLimitAt, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{255}})
	return verdict(r, expr.VerdictAccept, "")
}

// hopLimitAt is the hop limit's offset in the IPv6 header.
const hopLimitAt = 7

// groupFromPods drops the broadcast and multicast that local pods send
// to their bridge: "meta pkttype != host ip saddr @np-egress4 drop". A
// bridge floods such a frame to every port, and ingress is checked by
// destination address, which here is no pod's: every pod of the bridge
// would receive it, isolated or not. Which pods receive it cannot be told
// at this hook (its output device is the bridge), so none does. Neighbour
// discovery passed the rule before; the node still gets them (input hook).
// At the forward hook a packet is "host" unless it went to a group
// address: br_netfilter makes bridged unicast "host" too.
func groupFromPods(f family) rule {
	r := matchFamily(rule{}, f)
	r = r.add("meta pkttype != host",
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{unix.PACKET_HOST}})
	r = inSet(r, f, saddr, mapName(Egress, f))
	r = verdict(r, expr.VerdictDrop, "")
	r.comment = "pier: network policy, no broadcast or multicast from a pod to the others"
	return r
}

// vmapRule: "ip saddr vmap @np-egress4".
func vmapRule(f family, a addrField, m string) rule {
	r := matchFamily(rule{}, f)
	return r.add(fmt.Sprintf("%s %s vmap @%s", f.nft, a.name, m),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: a.off(f), Len: f.addrLen},
		&expr.Lookup{SourceRegister: reg1, SetName: m, DestRegister: 0, IsDestRegSet: true})
}

// baseChain is one of the hooked chains with its rules.
type baseChain struct {
	name     string
	hook     *nftables.ChainHook
	priority int32
	dir      Direction
	field    addrField
	comment  string
}

// baseChains: egress is checked where the packet leaves a pod (forward
// for routed and bridged traffic, input for traffic to the node itself),
// ingress where it reaches one (forward). The ingress chain runs after the
// egress chain on the same hook, so traffic between two pods of the node
// is checked against both.
var baseChains = []baseChain{
	{chainForwardEgress, nftables.ChainHookForward, 0, Egress, saddr, "pier: network policy, egress of local pods"},
	{chainForwardIngress, nftables.ChainHookForward, 1, Ingress, daddr, "pier: network policy, ingress of local pods"},
	{chainInputEgress, nftables.ChainHookInput, 0, Egress, saddr, "pier: network policy, local pods to the node"},
}

func mapName(d Direction, f family) string {
	switch {
	case d == Ingress && !f.v6:
		return mapIngress4
	case d == Ingress:
		return mapIngress6
	case !f.v6:
		return mapEgress4
	}
	return mapEgress6
}

func (b baseChain) rules() []rule {
	rules := []rule{ctEstablished(), neighbourDiscovery()}
	if b.name == chainForwardIngress {
		for _, f := range families {
			rules = append(rules, groupFromPods(f))
		}
	}
	for _, f := range families {
		r := vmapRule(f, b.field, mapName(b.dir, f))
		r.comment = b.comment
		rules = append(rules, r)
	}
	return rules
}

func (b baseChain) chain() *nftables.Chain {
	prio := nftables.ChainPriority(b.priority)
	policy := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: b.name, Table: table(), Type: nftables.ChainTypeFilter, Hooknum: b.hook, Priority: &prio, Policy: &policy}
}

func unclassifiedRule() rule {
	r := verdict(rule{}, expr.VerdictDrop, "")
	r.comment = "pier: pod not classified yet: dropped until pierd knows it"
	return r
}

// Pod chain rules.

func (p PodChain) rules() []rule {
	switch p.Verdict {
	case Open:
		r := verdict(rule{}, expr.VerdictAccept, "")
		r.comment = clampComment(fmt.Sprintf("pier: pod %s: no policy isolates it for %s", p.Pod, p.Dir))
		return []rule{r}
	case Gone:
		r := verdict(rule{}, expr.VerdictDrop, "")
		r.comment = clampComment(fmt.Sprintf("pier: pod %s is gone", p.Pod))
		return []rule{r}
	}
	var out []rule
	for _, pol := range p.Policies {
		out = append(out, verdict(rule{}, expr.VerdictJump, PolicyChainName(pol, p.Dir)))
	}
	r := verdict(rule{}, expr.VerdictDrop, "")
	r.comment = clampComment(fmt.Sprintf("pier: pod %s is isolated for %s", p.Pod, p.Dir))
	return append(out, r)
}

// Policy chain rules: one per rule, peer, port and family that applies.

func (p PolicyChain) rules() []rule {
	var out []rule
	for i, rl := range p.Rules {
		comment := clampComment(fmt.Sprintf("pier: policy %s %s rule %d", p.Policy, p.Dir, i))
		peers := rl.Peers
		if len(peers) == 0 {
			peers = []Peer{{}}
		}
		ports := rl.Ports
		if len(ports) == 0 {
			ports = []Port{{}}
		}
		for _, peer := range peers {
			for _, port := range ports {
				for _, r := range peerPortRules(p.Dir, peer, port) {
					r.comment = comment
					out = append(out, r)
				}
			}
		}
	}
	return out
}

// peerPortRules renders one peer and one port: one rule per family the
// combination can match, or a single family-free rule when it matches no
// address.
func peerPortRules(d Direction, peer Peer, port Port) []rule {
	field := saddr // the peer is the source of ingress traffic
	if d == Egress {
		field = daddr
	}
	if peer.IsAny() && port.Name == "" {
		return []rule{portMatch(rule{}, port)}
	}
	var out []rule
	for _, f := range families {
		if peer.CIDR.IsValid() && peer.CIDR.Addr().Is6() != f.v6 {
			continue
		}
		r := matchFamily(rule{}, f)
		switch {
		case peer.Set != "":
			r = inSet(r, f, field, famSet(peer.Set, f.v6))
		case peer.CIDR.IsValid():
			r = inPrefix(r, f, field, peer.CIDR, false)
			for _, ex := range peer.Except {
				if ex.Addr().Is6() == f.v6 {
					r = inPrefix(r, f, field, ex, true)
				}
			}
		}
		if port.Name != "" {
			r = l4proto(r, port.Proto)
			r = namedPort(r, f, famSet(PortSetName(port.Name), f.v6))
			out = append(out, verdict(r, expr.VerdictAccept, ""))
			continue
		}
		out = append(out, portMatch(r, port))
	}
	return out
}

// portMatch adds a numeric port (or none) and the accept.
func portMatch(r rule, port Port) rule {
	if port.Proto != 0 {
		r = l4proto(r, port.Proto)
		if port.First != 0 {
			r = dport(r, port.First, max(port.Last, port.First))
		}
	}
	return verdict(r, expr.VerdictAccept, "")
}

// Sets.

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// TableName is Pier's table, shared with masquerade and host ports.
const TableName = "pier"

func addrMap(name string, f family) *nftables.Set {
	return &nftables.Set{Table: table(), Name: name, IsMap: true, KeyType: f.keyType, DataType: nftables.TypeVerdict,
		KeyByteOrder: binaryutil.BigEndian, Comment: "pier: network policy verdict of local pod addresses"}
}

// maps returns the four address maps, IPv4 ones first.
func maps() []*nftables.Set {
	return []*nftables.Set{addrMap(mapIngress4, ipv4), addrMap(mapEgress4, ipv4), addrMap(mapIngress6, ipv6), addrMap(mapEgress6, ipv6)}
}

func (s SetSpec) set(f family) *nftables.Set {
	out := &nftables.Set{Table: table(), Name: famSet(s.Name, f.v6), KeyType: f.keyType, KeyByteOrder: binaryutil.BigEndian, Comment: clampComment(s.Comment)}
	if s.Kind == PortTuples {
		out.Concatenation = true
		out.KeyType = nftables.MustConcatSetType(f.keyType, nftables.TypeInetProto, nftables.TypeInetService)
	}
	return out
}

// element encodes a member for its family's set.
func (s SetSpec) element(m Member) nftables.SetElement {
	key := m.Addr.Unmap().AsSlice()
	if s.Kind == PortTuples {
		proto := []byte{m.Proto, 0, 0, 0}
		port := []byte{0, 0, 0, 0}
		binary.BigEndian.PutUint16(port, m.Port)
		key = append(append(key, proto...), port...)
	}
	return nftables.SetElement{Key: key, Comment: clampComment(m.Pod.String())}
}

// decodeMember reads an element of a set of kind k back.
func decodeMember(k SetKind, e nftables.SetElement, v6 bool) (Member, bool) {
	n := 4
	if v6 {
		n = 16
	}
	if len(e.Key) < n {
		return Member{}, false
	}
	a, _ := netip.AddrFromSlice(e.Key[:n])
	m := Member{Addr: a}
	if ns, name, ok := strings.Cut(e.Comment, "/"); ok {
		m.Pod = Ref{ns, name}
	}
	if k == PortTuples {
		if len(e.Key) < n+8 {
			return Member{}, false
		}
		m.Proto = e.Key[n]
		m.Port = binary.BigEndian.Uint16(e.Key[n+4:])
	}
	return m, true
}
