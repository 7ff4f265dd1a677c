package nat

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// # Design notes: a bridge's node-side setup and its marker
//
// Some of what an attachment needs belongs to its bridge, not to it: the
// host's own filters must accept the bridge's forwarded traffic (package
// firewall does that outside Pier's tables), and, with ingressPolicy
// same-bridge, Pier's table drops new connections into the bridge from
// anywhere else. When that is done, the bridge gets a marker in table inet
// pier:
//
//	set   <bridge>.bridge   ifname, one element: the bridge, commented
//	                        with what was done for it (for pierctl inspect)
//	set   isolated-bridges  ifname            bridges with same-bridge
//	set   isolated-pairs    ifname . ifname   (b . b) for each of them
//	chain forward           filter forward priority filter:
//	                          oifname @isolated-bridges ct state & (established|related) == 0
//	                          ct status & dnat == 0 iifname . oifname != @isolated-pairs drop
//	chain localnet          filter prerouting -150:
//	                          ct direction reply ct mark & 0x02000000 == 0x02000000 meta mark set meta mark | 0x02000000
//	                          iifname != "lo" ip daddr 127.0.0.0/8 drop
//
// Every ADD looks the marker set up by name before its batch (one GETSET,
// ~30 µs) and adds the bridge's element to it in the batch (a no-op when
// present; should the marker go between the two, the batch fails with
// ENOENT and the slow path sees it). When the marker is missing — the
// bridge's first container, the first one after its last left, or a
// flushed ruleset — the batch leaves it out and the plugin sets the
// bridge up: detects the host's filters, opens them, and calls
// SetupBridge, which adds the marker last (see bridgesetup.go). Finding
// the marker missing by a failing batch instead would cost the kernel's
// abort of a failed transaction, a grace period. Only when the batch
// fails (a flushed ruleset took the network's objects too) does the
// plugin also rebuild the network's elements from the attachment
// records. The marker goes when the bridge's last container does.
//
// Chain localnet is part of the table's base setup, which every slow path
// installs, whatever the attachment asks for. Its first rule marks the
// replies to the node's own connections to a host port at 127.0.0.1, which
// the localnet guard on a bridge with route_localnet lets through (see
// ports.go and package localnet, whose guard, not this table, keeps
// containers away from the node's 127.0.0.1 services: CVE-2020-8558). Its
// drop is a second line behind the guard: without route_localnet anywhere
// the kernel drops such packets as martians already, so the rule costs
// nothing it would not.
//
// With br_netfilter, frames bridged between two ports of one bridge pass
// the forward hook with the bridge as both input and output device, so the
// isolation rule keeps containers of one bridge reaching each other.

// Object names of the bridge-level objects.
const (
	markerSuffix     = ".bridge"
	isolatedBridges  = "isolated-bridges"
	isolatedPairs    = "isolated-pairs"
	forwardChain     = "forward"
	localnetChain    = "localnet"
	idMarker         = 31
	idIsolated       = 32
	idIsolatedPairs  = 33
	maxMarkerComment = maxCommentLen
)

// plainBridgeName is what a bridge name may be to name its marker as it
// is: an nft identifier, so a listing of the table loads again with nft -f.
var plainBridgeName = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_.-]*$`)

// markerName names bridge's marker set. No network object ends in
// ".bridge" (they end in -postrouting, -masq4, -masq6 or -masq-<hex>), so
// the names cannot meet.
func markerName(bridge string) string {
	if plainBridgeName.MatchString(bridge) {
		return bridge + markerSuffix
	}
	sum := sha256.Sum256([]byte(bridge))
	return "br" + hex.EncodeToString(sum[:6]) + markerSuffix
}

func markerSet(bridge string) *nftables.Set {
	return &nftables.Set{Table: pierTable(), Name: markerName(bridge), ID: idMarker, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, Comment: clampComment("pier: node-side setup of bridge " + bridge + " is done")}
}

func isolatedSet() *nftables.Set {
	return &nftables.Set{Table: pierTable(), Name: isolatedBridges, ID: idIsolated, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, Comment: "pier: bridges with ingressPolicy same-bridge"}
}

func isolatedPairsSet() *nftables.Set {
	return &nftables.Set{Table: pierTable(), Name: isolatedPairs, ID: idIsolatedPairs, Concatenation: true,
		KeyType:      nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName),
		KeyByteOrder: binaryutil.NativeEndian, Comment: "pier: traffic within a same-bridge bridge"}
}

func markerElement(bridge, comment string) nftables.SetElement {
	return nftables.SetElement{Key: ifnameKey(bridge), Comment: clampComment(comment)}
}

// Conntrack bits of the isolation rule: NF_CT_STATE_BIT of established
// and related, and IPS_DST_NAT.
const ctStateEstablishedRelated = 1<<1 | 1<<2

// isolationRule: see the design notes.
func isolationRule() rule {
	zero := make([]byte, 4)
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: isolatedBridges, SetID: idIsolated},
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ctStateEstablishedRelated), Xor: zero},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: zero},
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT), Xor: zero},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: zero},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 2},
		&expr.Lookup{SourceRegister: 1, SetName: isolatedPairs, SetID: idIsolatedPairs, Invert: true},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
	return rule{exprs: e, text: "oifname @" + isolatedBridges + " ct state != { established, related } ct status != dnat iifname . oifname != @" + isolatedPairs + " drop",
		comment: "pier: ingressPolicy same-bridge"}
}

// baseChain is one chain of the table's base setup with its rules.
type baseChain struct {
	chain *nftables.Chain
	rules []rule
}

// baseChains are the chains every setup of table inet pier installs,
// whatever the attachment asks for: the localnet drop and the isolation
// rule.
func baseChains() []baseChain {
	prio := func(p int32) *nftables.ChainPriority { v := nftables.ChainPriority(p); return &v }
	return []baseChain{
		{&nftables.Chain{Name: localnetChain, Table: pierTable(), Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: prio(-150)},
			[]rule{localnetReplyMark(), localnetRule()}},
		{&nftables.Chain{Name: forwardChain, Table: pierTable(), Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter},
			[]rule{isolationRule()}},
	}
}

func baseSets() []*nftables.Set { return []*nftables.Set{isolatedSet(), isolatedPairsSet()} }

// queueBaseSetup queues what table inet pier always has once Pier has
// set anything up in it: the localnet drop and the isolation chain with
// its sets. Chains are flushed and refilled, so it is idempotent; a
// bridge's setup reads the table first and queues only what is missing or
// wrong instead (see bridgesetup.go).
func queueBaseSetup(c *nftables.Conn) error {
	c.AddTable(pierTable())
	for _, s := range baseSets() {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("queue set %s: %w", s.Name, err)
		}
	}
	for _, ch := range baseChains() {
		c.AddChain(ch.chain)
		c.FlushChain(ch.chain)
		for _, r := range ch.rules {
			c.AddRule(r.nftRule(ch.chain))
		}
	}
	return nil
}

func pairKey(bridge string) []byte { return concat(ifnameKey(bridge), ifnameKey(bridge)) }

// isIsolated reports whether bridge is in isolated-bridges.
func isIsolated(conn *nftables.Conn, bridge string) (bool, error) {
	els, err := listSet(conn, isolatedSet())
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(els, func(e nftables.SetElement) bool { return ifnameOf(e.Key) == bridge }), nil
}

// RemoveBridge deletes the bridge's marker and isolation elements; what is
// already gone is no error. The isolation is read first so that the usual
// removal is one batch: a batch fails whole on a missing element, and each
// batch that deletes something makes the socket's close wait a grace
// period (see closeConn).
func RemoveBridge(bridge string, opts ...Option) error {
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("nat: remove bridge %s: %w", bridge, err)
	}
	defer closeConn(conn, opts)
	isolated, err := isIsolated(conn, bridge)
	if err != nil {
		return fmt.Errorf("nat: remove bridge %s (table inet %s): %w", bridge, TableName, err)
	}
	m := markerSet(bridge)
	parts := []func(*nftables.Conn){func(c *nftables.Conn) { c.DelSet(m) }}
	if isolated {
		parts = append(parts, func(c *nftables.Conn) {
			_ = c.SetDeleteElements(isolatedSet(), []nftables.SetElement{{Key: ifnameKey(bridge)}})
			_ = c.SetDeleteElements(isolatedPairsSet(), []nftables.SetElement{{Key: pairKey(bridge)}})
		})
	}
	if err := flushTolerant(conn, parts); err != nil {
		return fmt.Errorf("nat: remove bridge %s (table inet %s): %w", bridge, TableName, err)
	}
	return nil
}

// BridgeState is what table inet pier says of a bridge.
type BridgeState struct {
	Ready    bool   // its marker is there
	Note     string // the marker's comment
	Isolated bool
}

// ReadBridge reads the bridge's marker and isolation.
func ReadBridge(bridge string, opts ...Option) (BridgeState, error) {
	conn, err := dial(opts)
	if err != nil {
		return BridgeState{}, fmt.Errorf("nat: read bridge %s: %w", bridge, err)
	}
	defer closeConn(conn, opts)
	var st BridgeState
	els, err := listSet(conn, markerSet(bridge))
	if err == nil {
		for _, e := range els {
			if ifnameOf(e.Key) == bridge {
				st.Ready, st.Note = true, e.Comment
			}
		}
		st.Isolated, err = isIsolated(conn, bridge)
	}
	if err != nil {
		return BridgeState{}, fmt.Errorf("nat: read bridge %s: %w", bridge, err)
	}
	return st, nil
}

// ReadyBridges returns the bridges whose marker is in the table.
func ReadyBridges(opts ...Option) (map[string]bool, error) {
	conn, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("nat: list bridge markers: %w", err)
	}
	defer closeConn(conn, opts)
	// GetSets of google/nftables v0.3.0 loses the errno of a missing
	// table (%v), so the table is looked for first.
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nat: list inet tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }) {
		return map[string]bool{}, nil
	}
	sets, err := conn.GetSets(pierTable())
	if err != nil {
		return nil, fmt.Errorf("nat: list sets of table inet %s: %w", TableName, err)
	}
	out := map[string]bool{}
	for _, s := range sets {
		if len(s.Name) <= len(markerSuffix) || s.Name[len(s.Name)-len(markerSuffix):] != markerSuffix {
			continue
		}
		els, err := listSet(conn, s)
		if err != nil {
			return nil, fmt.Errorf("nat: list marker %s: %w", s.Name, err)
		}
		for _, e := range els {
			out[ifnameOf(e.Key)] = true
		}
	}
	return out, nil
}
