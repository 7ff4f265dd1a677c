package routing

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// # Design notes: the VXLAN guard
//
// pier.vxlan's UDP socket (port VXLANPort) decapsulates whatever reaches
// any local address of the node, from anyone, and its inner packet then
// enters the forward path as if it came from another node: with any
// source address its sender wrote in it. A pod needs no privilege for
// that — an ordinary UDP datagram to its node's address, carrying an
// Ethernet frame for pier.vxlan's MAC (derived from the node's address,
// so predictable, and published) — and neither the source address check
// (which sees the outer packet, from the pod's own address) nor network
// policy (which judges the forged inner source) can tell. The same
// datagram sent to another node's address leaves this node masqueraded
// to this node's own address, the source every peer trusts.
//
// So in vxlan mode the routing data plane keeps, in table inet pier:
//
//	set   vxlan-peers4, vxlan-peers6   the peers' underlay addresses
//	chain vxlan-input    filter input, priority filter:
//	                       udp dport 8472 iifname != "<underlay link>" drop
//	                       udp dport 8472 ip saddr != @vxlan-peers4 drop
//	                       udp dport 8472 ip6 saddr != @vxlan-peers6 drop
//	chain vxlan-forward  filter forward, priority filter:
//	                       udp dport 8472 iifname != "<underlay link>" drop
//
// VXLAN is decapsulated only when it arrives on the underlay link from a
// peer: never from a pod (its packets arrive on a bridge, whatever source
// address it writes), a local container of another runtime, or a host the
// cluster does not know. And nothing the node forwards from anywhere but
// the underlay — pods, other containers, pier.vxlan's own decapsulated
// traffic — leaves for port 8472: the port is the overlay's, as other
// CNI plugins reserve theirs (Calico drops VXLAN and IP-in-IP from
// workloads). The node's own encapsulated traffic is locally sent, so it
// passes neither chain. IP reassembles fragments before the input hook, so
// a fragmented datagram is judged whole.
//
// The rules are node-wide and the peers a set: a pod's ADD costs nothing,
// and a node joining or leaving changes one element. Apply reads what is
// there and writes only what differs (a write wakes pierd's netfilter
// watcher); RestoreGuard puts it all back after a flush.

// Names of the guard's objects in table inet pier. No object of a CNI
// network (<network>-postrouting, -masq4, -masq6, -masq-<hex>), of a
// bridge (<bridge>.bridge), of network policy (np-…) or of the node-wide
// setup has one of these names.
const (
	GuardInputChain   = "vxlan-input"
	GuardForwardChain = "vxlan-forward"
	GuardPeers4       = "vxlan-peers4"
	GuardPeers6       = "vxlan-peers6"
	guardTable        = "pier" // table inet pier, Pier's on every node
	guardVersion      = "v1"   // in the rules' comments: bumped when the rules change
)

// guardRule is one rule of the guard: its expressions and the comment by
// which Apply recognises it.
type guardRule struct {
	exprs   []expr.Any
	comment string
}

// guardRules are the rules of the guard's chains for underlay.
func guardRules(underlay string) (input, forward []guardRule) {
	tag := func(what string) string {
		return fmt.Sprintf("pier: vxlan guard %s %s: %s", guardVersion, underlay, what)
	}
	notUnderlay := append(vxlanPort(), notIIF(underlay)...)
	input = []guardRule{
		{append(slices.Clone(notUnderlay), drop()), tag("vxlan only from the underlay link")},
		{append(append(vxlanPort(), notFromSet(unix.NFPROTO_IPV4, 12, 4, guardSets()[0])...), drop()), tag("vxlan only from peers (IPv4)")},
		{append(append(vxlanPort(), notFromSet(unix.NFPROTO_IPV6, 8, 16, guardSets()[1])...), drop()), tag("vxlan only from peers (IPv6)")},
	}
	forward = []guardRule{
		{append(slices.Clone(notUnderlay), drop()), tag("no vxlan from pods or containers")},
	}
	return input, forward
}

// vxlanPort matches UDP to VXLANPort.
func vxlanPort() []expr.Any {
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, VXLANPort)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
}

// notIIF matches packets that did not arrive on link name.
func notIIF(name string) []expr.Any {
	key := make([]byte, unix.IFNAMSIZ)
	copy(key, name)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: key},
	}
}

// notFromSet matches packets of one family whose source address (at off,
// n bytes, in the network header) is not in set.
func notFromSet(nfproto byte, off, n uint32, set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true},
	}
}

func drop() expr.Any { return &expr.Verdict{Kind: expr.VerdictDrop} }

func guardTableObj() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: guardTable}
}

// guardSets are the peer sets. Their ids are batch-local, set so that
// rules and elements of the batch that creates them find them, and so
// that the library's own id counter, not safe for concurrent use, is not
// touched.
func guardSets() []*nftables.Set {
	t := guardTableObj()
	return []*nftables.Set{
		{Table: t, Name: GuardPeers4, ID: 1, KeyType: nftables.TypeIPAddr, Comment: "pier: vxlan peers' underlay addresses (IPv4)"},
		{Table: t, Name: GuardPeers6, ID: 2, KeyType: nftables.TypeIP6Addr, Comment: "pier: vxlan peers' underlay addresses (IPv6)"},
	}
}

func guardChains() []*nftables.Chain {
	t, accept := guardTableObj(), nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Table: t, Name: GuardInputChain, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput,
			Priority: nftables.ChainPriorityFilter, Policy: &accept},
		{Table: t, Name: GuardForwardChain, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward,
			Priority: nftables.ChainPriorityFilter, Policy: &accept},
	}
}

// nftConn opens an nftables connection in the node's namespace; done
// closes it.
func (p *Programmer) nftConn() (*nftables.Conn, func(), error) {
	if p.NetNS == "" {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return nil, nil, fmt.Errorf("nftables: %w", err)
		}
		return c, func() { _ = c.CloseLasting() }, nil
	}
	ns, err := netns.GetFromPath(p.NetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("open network namespace %s: %w", p.NetNS, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)), nftables.AsLasting())
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("nftables in %s: %w", p.NetNS, err)
	}
	return c, func() { _ = c.CloseLasting(); ns.Close() }, nil
}

// RestoreGuard writes the VXLAN guard again for the peers of the last
// Apply: after Pier's table was flushed or deleted (pierd's netfilter
// watcher calls it), without waiting for the next reconcile. It does
// nothing outside vxlan mode or before the first Apply.
func (p *Programmer) RestoreGuard() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Mode != ModeVXLAN || p.guardPeers == nil {
		return nil
	}
	h, done, err := p.handle()
	if err != nil {
		return err
	}
	defer done()
	under, err := linkWith(h, p.VTEP.Unmap())
	if err != nil {
		return err
	}
	return p.reconcileGuard(under.Attrs().Name, p.guardPeers)
}

// reconcileGuard makes table inet pier hold the guard for underlay and
// peers, writing only what differs.
func (p *Programmer) reconcileGuard(underlay string, peers []Peer) error {
	c, done, err := p.nftConn()
	if err != nil {
		return err
	}
	defer done()
	have, err := readGuard(c)
	if err != nil {
		return fmt.Errorf("vxlan guard: %w", err)
	}
	input, forward := guardRules(underlay)
	changed, err := have.queueObjects(c)
	if err != nil {
		return fmt.Errorf("vxlan guard: %w", err)
	}
	changed = queueRules(c, guardChains()[0], have.rules[GuardInputChain], input) || changed
	changed = queueRules(c, guardChains()[1], have.rules[GuardForwardChain], forward) || changed
	elems, err := have.queueElements(c, peers)
	if err != nil {
		return fmt.Errorf("vxlan guard: %w", err)
	}
	if !changed && !elems {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("vxlan guard: write table inet %s: %w", guardTable, err)
	}
	p.log().Debug("vxlan guard written", "underlay", underlay, "peers", len(peers))
	return nil
}

// guardState is what table inet pier holds of the guard.
type guardState struct {
	table  bool
	chains map[string]bool
	rules  map[string][]string // the comments of each chain's rules
	sets   map[string]map[netip.Addr]bool
}

func readGuard(c *nftables.Conn) (guardState, error) {
	s := guardState{chains: map[string]bool{}, rules: map[string][]string{}, sets: map[string]map[netip.Addr]bool{}}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return s, fmt.Errorf("list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == guardTable }) {
		return s, nil
	}
	s.table = true
	t := guardTableObj()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return s, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != guardTable || (ch.Name != GuardInputChain && ch.Name != GuardForwardChain) {
			continue
		}
		s.chains[ch.Name] = true
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return s, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			s.rules[ch.Name] = append(s.rules[ch.Name], comment)
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return s, fmt.Errorf("list sets: %w", err)
	}
	for _, set := range sets {
		if set.Name != GuardPeers4 && set.Name != GuardPeers6 {
			continue
		}
		els, err := c.GetSetElements(set)
		if err != nil {
			return s, fmt.Errorf("list elements of set %s: %w", set.Name, err)
		}
		s.sets[set.Name] = map[netip.Addr]bool{}
		for _, e := range els {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				s.sets[set.Name][a.Unmap()] = true
			}
		}
	}
	return s, nil
}

// queueObjects queues the table, sets and chains that are missing, and
// reports whether it queued anything.
func (s guardState) queueObjects(c *nftables.Conn) (bool, error) {
	changed := false
	if !s.table {
		c.AddTable(guardTableObj())
		changed = true
	}
	for _, set := range guardSets() {
		if s.sets[set.Name] == nil {
			if err := c.AddSet(set, nil); err != nil {
				return false, fmt.Errorf("set %s: %w", set.Name, err)
			}
			changed = true
		}
	}
	for _, ch := range guardChains() {
		if !s.chains[ch.Name] {
			c.AddChain(ch)
			changed = true
		}
	}
	return changed, nil
}

// queueRules replaces the chain's rules when their comments (which name
// the rules' version and underlay link) are not the wanted ones.
func queueRules(c *nftables.Conn, ch *nftables.Chain, have []string, want []guardRule) bool {
	comments := make([]string, len(want))
	for i, r := range want {
		comments[i] = r.comment
	}
	if slices.Equal(have, comments) {
		return false
	}
	c.FlushChain(ch)
	for _, r := range want {
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)})
	}
	return true
}

// queueElements makes the peer sets hold the peers' underlay addresses,
// and reports whether it queued a change.
func (s guardState) queueElements(c *nftables.Conn, peers []Peer) (bool, error) {
	want := map[string]map[netip.Addr]bool{GuardPeers4: {}, GuardPeers6: {}}
	for _, pr := range peers {
		u := pr.Underlay.Unmap()
		if u.Is4() {
			want[GuardPeers4][u] = true
		} else {
			want[GuardPeers6][u] = true
		}
	}
	changed := false
	for _, set := range guardSets() {
		var add, del []nftables.SetElement
		for a := range want[set.Name] {
			if !s.sets[set.Name][a] {
				add = append(add, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		for a := range s.sets[set.Name] {
			if !want[set.Name][a] {
				del = append(del, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		if len(add) > 0 {
			if err := c.SetAddElements(set, add); err != nil {
				return false, fmt.Errorf("elements of %s: %w", set.Name, err)
			}
			changed = true
		}
		if len(del) > 0 {
			if err := c.SetDeleteElements(set, del); err != nil {
				return false, fmt.Errorf("elements of %s: %w", set.Name, err)
			}
			changed = true
		}
	}
	return changed, nil
}
