package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// # Design notes: the source address check (ipspoofchk)
//
// A container holding CAP_NET_RAW (in the default capability set of
// containerd, CRI-O and Docker) can write any source address into its
// packets. Whatever trusts a source address downstream is then fooled:
// network policy classifies a pod's traffic by it (a pod sending as its
// neighbour is judged by the neighbour's policies), other containers and
// the node answer it, conntrack files it under someone else's connection.
// Nothing in the kernel binds an address to the bridge port it came in
// on, so Pier does, in table bridge pier, beside the MAC check:
//
//	set   ipspoof-ports     ifname               ports whose source addresses are checked
//	set   ipspoof-allowed4  ifname . ipv4_addr   the addresses each checked port may send from
//	set   ipspoof-allowed6  ifname . ipv6_addr
//	chain prerouting        ... iifname @ipspoof-ports jump ipspoof
//	chain ipspoof           ether type ip  iifname . ip saddr @ipspoof-allowed4 return
//	                        ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return
//	                        ether type arp, Ethernet/IPv4:  iifname . arp saddr ip @ipspoof-allowed4 return
//	                        ether type arp, Ethernet/IPv4:  arp saddr ip 0.0.0.0 return
//	                        ether type ip6 iifname . ip6 saddr @ipspoof-allowed6 return
//	                        ip6 saddr fe80::/10 or ::, icmpv6 type 130-136 or 143 return
//	                        drop
//
// So a checked port sends IPv4 and IPv6 from its own addresses only, ARP
// only for them, and nothing else at all (no other ethertype: a VLAN tag
// would carry IP past both this chain and br_netfilter, which by default
// does not look into tagged frames). The exceptions are what a host sends
// before or beside its addresses: DHCP discovery from 0.0.0.0 (a delegated
// dhcp IPAM gets the lease through the container's interface before the
// ADD's batch binds it), ARP probes, and IPv6 neighbour discovery and MLD
// from the link-local or unspecified address. Link-local addresses are
// not bound (the container's kernel makes them), so other traffic from
// them is dropped: network policy could not classify it.
//
// Not checked: the target of a neighbour advertisement. It is what
// poisons a neighbour's cache, as an ARP reply's sender address is (which
// is checked), but matching it against the port's addresses takes a raw
// payload in a concatenation, which the nft of Debian 12 (1.0.6, no
// `icmpv6 taddr`) lists in a form it cannot load again: `nft list
// ruleset | nft -f -` of the whole node would fail. So a container can
// still claim a neighbour's IPv6 address towards the node and the other
// containers of its bridge and receive (not send as) its traffic.
//
// An attachment adds 1 + one element per address, in the ADD's one batch;
// DEL removes them by key (the port's name is the attachment's own).

const (
	sourcePorts    = "ipspoof-ports"
	sourceAllowed4 = "ipspoof-allowed4"
	sourceAllowed6 = "ipspoof-allowed6"
	sourceChain    = "ipspoof"

	idSourcePorts    = 24
	idSourceAllowed4 = 25
	idSourceAllowed6 = 26
)

// SourceCheck binds the addresses a bridge port may send from.
type SourceCheck struct {
	Port  string // the host veth
	Addrs []netip.Addr
}

func sourcePortsSet() *nftables.Set {
	return &nftables.Set{Table: l2Table(), Name: sourcePorts, ID: idSourcePorts, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, Comment: "pier: container ports whose source addresses are checked (ipspoofchk)"}
}

func sourceAllowedSet(v6 bool) *nftables.Set {
	name, id, typ := sourceAllowed4, uint32(idSourceAllowed4), nftables.TypeIPAddr
	if v6 {
		name, id, typ = sourceAllowed6, idSourceAllowed6, nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: l2Table(), Name: name, ID: id, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, typ), Concatenation: true,
		KeyByteOrder: binaryutil.BigEndian, Comment: "pier: the addresses each checked port may send from"}
}

func (s SourceCheck) validate() error {
	if s.Port == "" || len(s.Port) >= unix.IFNAMSIZ {
		return fmt.Errorf("source check of port %q: %w", s.Port, ErrInvalid)
	}
	for _, a := range s.Addrs {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("source check of port %s: address %v: %w", s.Port, a, ErrInvalid)
		}
	}
	return nil
}

// elements are the port's element and one pair per address, by set.
func (s SourceCheck) elements(comment string) []setElems {
	port := ifnameKey(s.Port)
	out := []setElems{{sourcePortsSet(), []nftables.SetElement{{Key: port, Comment: comment}}}}
	var v4, v6 []nftables.SetElement
	seen := map[netip.Addr]bool{}
	for _, a := range s.Addrs {
		a = a.Unmap()
		if seen[a] {
			continue // one key twice in a batch fails it
		}
		seen[a] = true
		e := nftables.SetElement{Key: concat(port, a.AsSlice()), Comment: comment}
		if a.Is4() {
			v4 = append(v4, e)
		} else {
			v6 = append(v6, e)
		}
	}
	if len(v4) > 0 {
		out = append(out, setElems{sourceAllowedSet(false), v4})
	}
	if len(v6) > 0 {
		out = append(out, setElems{sourceAllowedSet(true), v6})
	}
	return out
}

// Expressions of the source check's rules. Registers: an interface name
// fills NFT_REG_1 (16 bytes); the second field of a concatenation starts
// at NFT_REG_2.
const (
	etherTypeOff = 12
	arpSpaOff    = 14 // sender protocol address of an Ethernet/IPv4 ARP
)

func etherType(typ uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: etherTypeOff, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(typ)},
	}
}

// portPairIn looks up "iifname . <field>" in set (invert: not in it).
func portPairIn(base expr.PayloadBase, off, n uint32, set string, id uint32, invert bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Payload{DestRegister: 2, Base: base, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: set, SetID: id, Invert: invert},
	}
}

func payloadEq(base expr.PayloadBase, off uint32, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: uint32(len(data))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
	}
}

// inLinkLocal6 compares the 16 bytes at off with fe80::/10 (op: in or not).
func inLinkLocal6(base expr.PayloadBase, off uint32, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: 2},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 2, Mask: []byte{0xff, 0xc0}, Xor: []byte{0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{0xfe, 0x80}},
	}
}

func icmpv6Types(first, last byte) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
	}
	if first == last {
		return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{first}})
	}
	return append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{first}, ToData: []byte{last}})
}

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var (
	verdictReturn = []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}
	verdictDrop   = []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	// arpEthernetIPv4 is htype 1, ptype IPv4, hlen 6, plen 4: the only ARP
	// a Linux neighbour processes on an Ethernet link, and the layout the
	// sender address offset assumes.
	arpEthernetIPv4 = []byte{0, 1, 0x08, 0x00, 6, 4}
)

// sourceRules are the chain ipspoof; see the design notes.
func sourceRules() []rule {
	nh, th := expr.PayloadBaseNetworkHeader, expr.PayloadBaseTransportHeader
	unspecified6 := make([]byte, 16)
	rules := []rule{
		{exprs: join(etherType(unix.ETH_P_IP), portPairIn(nh, ipv4.saddrOff, 4, sourceAllowed4, idSourceAllowed4, false), verdictReturn),
			text: "ether type ip iifname . ip saddr @" + sourceAllowed4 + " return"},
		{exprs: join(etherType(unix.ETH_P_IP), payloadEq(nh, ipv4.saddrOff, []byte{0, 0, 0, 0, 255, 255, 255, 255}),
			[]expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}}},
			payloadEq(th, 0, []byte{0, 68, 0, 67}), verdictReturn),
			text: "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return", comment: "pier: DHCP discovery"},
		{exprs: join(etherType(unix.ETH_P_ARP), payloadEq(nh, 0, arpEthernetIPv4), portPairIn(nh, arpSpaOff, 4, sourceAllowed4, idSourceAllowed4, false), verdictReturn),
			text: "arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . arp saddr ip @" + sourceAllowed4 + " return"},
		{exprs: join(etherType(unix.ETH_P_ARP), payloadEq(nh, 0, arpEthernetIPv4), payloadEq(nh, arpSpaOff, []byte{0, 0, 0, 0}), verdictReturn),
			text: "arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ip 0.0.0.0 return", comment: "pier: ARP probe"},
		{exprs: join(etherType(unix.ETH_P_IPV6), portPairIn(nh, ipv6.saddrOff, 16, sourceAllowed6, idSourceAllowed6, false), verdictReturn),
			text: "ether type ip6 iifname . ip6 saddr @" + sourceAllowed6 + " return"},
	}
	for _, src := range []struct {
		match []expr.Any
		text  string
	}{
		{inLinkLocal6(nh, ipv6.saddrOff, expr.CmpOpEq), "ip6 saddr fe80::/10"},
		{payloadEq(nh, ipv6.saddrOff, unspecified6), "ip6 saddr ::"},
	} {
		for _, typ := range []struct {
			first, last byte
			text        string
		}{{130, 136, "130-136"}, {143, 143, "143"}} {
			rules = append(rules, rule{exprs: join(etherType(unix.ETH_P_IPV6), src.match, icmpv6Types(typ.first, typ.last), verdictReturn),
				text: src.text + " icmpv6 type " + typ.text + " return", comment: "pier: neighbour discovery and MLD"})
		}
	}
	return append(rules, rule{exprs: verdictDrop, text: "drop", comment: "pier: not the port's source address (ipspoofchk)"})
}

// jumpSourceRule: "iifname @ipspoof-ports jump ipspoof".
func jumpSourceRule() rule {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: sourcePorts, SetID: idSourcePorts},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: sourceChain},
	}
	return rule{exprs: e, text: "iifname @" + sourcePorts + " jump " + sourceChain, comment: "pier: ipspoofchk"}
}

// queueSourceSetup queues the sets and chain ipspoof, flushed and refilled.
// It runs before the prerouting chain's rules, which jump to it.
func queueSourceSetup(c *nftables.Conn) error {
	for _, s := range []*nftables.Set{sourcePortsSet(), sourceAllowedSet(false), sourceAllowedSet(true)} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("queue set bridge %s %s: %w", TableName, s.Name, err)
		}
	}
	ch := &nftables.Chain{Name: sourceChain, Table: l2Table()}
	c.AddChain(ch)
	c.FlushChain(ch)
	for _, r := range sourceRules() {
		c.AddRule(r.nftRule(ch))
	}
	return nil
}

// DelSources removes a port's source check: its element and its pairs
// with addrs. Keys already gone, and sets an older table lacks, are no
// error. The port's name is its attachment's alone, so no owner check.
func DelSources(port string, addrs []netip.Addr, opts ...Option) error {
	return Detach(Detachment{Sources: &SourceCheck{Port: port, Addrs: addrs}}, opts...)
}

// queueSourceDeletes deletes the keys of src; with addFirst each key is
// added first (a no-op when present), so that a key already gone is no
// error.
func queueSourceDeletes(c *nftables.Conn, src []setElems, addFirst bool) error {
	var errs []error
	for _, se := range src {
		if addFirst {
			errs = append(errs, c.SetAddElements(se.set, se.elems))
		}
		errs = append(errs, c.SetDeleteElements(se.set, se.elems))
	}
	return errors.Join(errs...)
}

// presentSources keeps the keys of src that exist; a missing set or table
// has none.
func presentSources(conn *nftables.Conn, src []setElems) ([]setElems, error) {
	var out []setElems
	for _, se := range src {
		have, err := listSet(conn, se.set)
		if err != nil {
			return nil, err
		}
		var left []nftables.SetElement
		for _, e := range se.elems {
			if slices.ContainsFunc(have, func(h nftables.SetElement) bool { return slices.Equal(h.Key, e.Key) }) {
				left = append(left, e)
			}
		}
		if len(left) > 0 {
			out = append(out, setElems{se.set, left})
		}
	}
	return out, nil
}

func keyOnly(els []nftables.SetElement) []nftables.SetElement {
	out := make([]nftables.SetElement, len(els))
	for i, e := range els {
		out[i] = nftables.SetElement{Key: e.Key}
	}
	return out
}

// SourceElement is one element of the source check sets: a checked port
// (Addr invalid) or an address it may send from.
type SourceElement struct {
	Port  string
	Addr  netip.Addr
	Owner string
	ref   elemRef
}

func listSources(conn *nftables.Conn) ([]SourceElement, error) {
	var out []SourceElement
	for _, s := range []*nftables.Set{sourcePortsSet(), sourceAllowedSet(false), sourceAllowedSet(true)} {
		els, err := listSet(conn, s)
		if err != nil {
			return nil, err
		}
		for _, e := range els {
			se := SourceElement{Port: ifnameOf(e.Key), Owner: e.Comment, ref: elemRef{s, nftables.SetElement{Key: e.Key}}}
			if len(e.Key) > unix.IFNAMSIZ {
				se.Addr, _ = netip.AddrFromSlice(e.Key[unix.IFNAMSIZ:])
			}
			out = append(out, se)
		}
	}
	return out, nil
}
