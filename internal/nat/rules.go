package nat

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// family holds what differs between IPv4 and IPv6.
type family struct {
	nft       string // payload keyword in nft syntax: "ip" or "ip6"
	nfproto   byte   // NFPROTO_IPV4/6, matched first: the table is inet
	keyType   nftables.SetDatatype
	addrLen   uint32
	saddrOff  uint32 // offsets in the network header
	daddrOff  uint32
	multicast netip.Prefix // never masqueraded, like the reference plugin
	setID     uint32       // batch-local id of the map, see newMap
}

var (
	ipv4 = family{
		nft: "ip", nfproto: unix.NFPROTO_IPV4, keyType: nftables.TypeIPAddr,
		addrLen: 4, saddrOff: 12, daddrOff: 16,
		multicast: netip.MustParsePrefix("224.0.0.0/4"), setID: 1,
	}
	ipv6 = family{
		nft: "ip6", nfproto: unix.NFPROTO_IPV6, keyType: nftables.TypeIP6Addr,
		addrLen: 16, saddrOff: 8, daddrOff: 24,
		multicast: netip.MustParsePrefix("ff00::/8"), setID: 2,
	}
	families = []family{ipv4, ipv6}
)

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// rule is one rule both as netlink expressions and as the text nft prints
// for them; constructors build the two side by side so they cannot drift.
type rule struct {
	exprs   []expr.Any
	text    string
	comment string
}

func (r rule) String() string {
	if r.comment == "" {
		return r.text
	}
	return fmt.Sprintf("%s comment \"%s\"", r.text, r.comment)
}

func (r rule) nftRule(chain *nftables.Chain) *nftables.Rule {
	nr := &nftables.Rule{Table: chain.Table, Chain: chain, Exprs: r.exprs}
	if r.comment != "" {
		nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.comment)
	}
	return nr
}

// matchFamily restricts a rule of the inet table to one address family, as
// nft does implicitly for "ip" and "ip6" matches.
func matchFamily(f family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

// vmapRule: "ip saddr vmap @<map>", the base chain's dispatch to the
// generation chain named by the source address's element.
func vmapRule(f family, mapName, comment string) rule {
	e := append(matchFamily(f),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOff, Len: f.addrLen},
		&expr.Lookup{SourceRegister: 1, SetName: mapName, SetID: f.setID, DestRegister: 0, IsDestRegSet: true},
	)
	return rule{exprs: e, text: fmt.Sprintf("%s saddr vmap @%s", f.nft, mapName), comment: comment}
}

// returnRule: "ip daddr <prefix> return", a destination not masqueraded.
func returnRule(p netip.Prefix) rule {
	f := familyOf(p.Addr())
	e := append(matchFamily(f), daddrIn(f, p)...)
	e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	dst := p.String()
	if p.IsSingleIP() {
		dst = p.Addr().String() // nft omits /32 and /128
	}
	return rule{exprs: e, text: fmt.Sprintf("%s daddr %s return", f.nft, dst)}
}

func masqueradeRule(comment string) rule {
	return rule{exprs: []expr.Any{&expr.Masq{}}, text: "masquerade", comment: comment}
}

// daddrIn matches destinations inside p the way nft compiles it: a
// byte-aligned prefix compares its leading bytes, others are masked first.
func daddrIn(f family, p netip.Prefix) []expr.Any { return addrIn(f, f.daddrOff, p) }

// addrIn matches the address at offset off of the network header (a
// source or destination) inside p, as daddrIn.
func addrIn(f family, off uint32, p netip.Prefix) []expr.Any {
	addr := p.Addr().AsSlice()
	bits := p.Bits()
	if bits%8 == 0 {
		n := uint32(bits / 8)
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:n]},
		}
	}
	mask := make([]byte, f.addrLen)
	for i := range mask {
		switch {
		case bits >= 8:
			mask[i], bits = 0xff, bits-8
		case bits > 0:
			mask[i], bits = byte(0xff<<(8-bits)), 0
		}
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.addrLen},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.addrLen, Mask: mask, Xor: make([]byte, f.addrLen)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
	}
}

// baseRules are the network's base chain: one lookup per family. They do
// not depend on the subnets, so they never go stale.
func (s spec) baseRules() []rule {
	return []rule{
		vmapRule(ipv4, s.set4, s.ruleComment()),
		vmapRule(ipv6, s.set6, s.ruleComment()),
	}
}

// genRules are the generation chain: return for the network's own subnets
// and multicast, masquerade the rest.
func (s spec) genRules() []rule {
	var rules []rule
	for _, p := range s.v4 {
		rules = append(rules, returnRule(p))
	}
	rules = append(rules, returnRule(ipv4.multicast))
	for _, p := range s.v6 {
		rules = append(rules, returnRule(p))
	}
	rules = append(rules, returnRule(ipv6.multicast))
	return append(rules, masqueradeRule(s.ruleComment()))
}

// pierTable is the table every object lives in.
func pierTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// newMap describes a network's address map of family f. The id lets rules
// in the same batch refer to a map that batch creates; it only has to be
// unique within one batch, and setting it keeps the library from touching
// its global id counter, which is not safe for concurrent use.
func newMap(o objects, f family) *nftables.Set {
	name := o.set4
	if f.nfproto == ipv6.nfproto {
		name = o.set6
	}
	return &nftables.Set{
		Table:        pierTable(),
		Name:         name,
		ID:           f.setID,
		IsMap:        true,
		KeyType:      f.keyType,
		DataType:     nftables.TypeVerdict,
		KeyByteOrder: binaryutil.BigEndian,
		Comment:      o.setComment(),
	}
}

func newBaseChain(o objects) *nftables.Chain {
	return &nftables.Chain{
		Name:     o.chain,
		Table:    pierTable(),
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	}
}

func newRegularChain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: pierTable()}
}

// queueSetup queues the whole network: table, maps, base chain and the
// current generation chain, each chain flushed and refilled so that the
// result is the same however often, and however concurrently, it runs.
// On objects that exist already, the chain updates and flushes leave work
// for the kernel's deferred release (see the package notes on cost).
func queueSetup(c *nftables.Conn, s spec) error {
	c.AddTable(pierTable())
	err4 := c.AddSet(newMap(s.objects, ipv4), nil)
	err6 := c.AddSet(newMap(s.objects, ipv6), nil)
	if err4 != nil || err6 != nil {
		return fmt.Errorf("queue maps: %v %v", err4, err6)
	}
	// The base chain first: `nft list` shows chains in creation order and
	// reads best top-down.
	for _, ch := range []struct {
		chain *nftables.Chain
		rules []rule
	}{{newBaseChain(s.objects), s.baseRules()}, {newRegularChain(s.gen), s.genRules()}} {
		c.AddChain(ch.chain)
		c.FlushChain(ch.chain)
		for _, r := range ch.rules {
			c.AddRule(r.nftRule(ch.chain))
		}
	}
	return nil
}

// mapElements are keys sending their packets to chain gen, with comment.
func mapElements(keys [][]byte, gen, comment string) []nftables.SetElement {
	out := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		out[i] = nftables.SetElement{
			Key:         k,
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: gen},
			Comment:     comment,
		}
	}
	return out
}

// keyElements are bare keys, all a deletion needs.
func keyElements(keys [][]byte) []nftables.SetElement {
	out := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		out[i] = nftables.SetElement{Key: k}
	}
	return out
}
