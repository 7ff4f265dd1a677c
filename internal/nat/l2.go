package nat

import (
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// # Design notes: table bridge pier (MAC spoof check, RA guard)
//
// Frames a container sends enter the bridge through its host veth (the
// bridge port) and are filtered here, in the bridge family, before the
// bridge forwards them anywhere — to a neighbour or to the node:
//
//	set   macspoof-ports    ifname                 ports whose source MAC is checked
//	set   macspoof-allowed  ifname . ether_addr    the MAC each port may send from
//	set   bridges           ifname                 bridges Pier has attached containers to
//	chain prerouting        filter, bridge prerouting, priority -300:
//	                          meta iifgroup <group> icmpv6 type nd-router-advert drop
//	                          meta iifgroup <group> icmpv6 type nd-redirect drop
//	                          iifname @macspoof-ports iifname . ether saddr != @macspoof-allowed drop
//	                          iifname @ipspoof-ports jump ipspoof     (the source address check, sources.go)
//
// macspoofchk is two elements per attachment, added with its other
// elements in the ADD's one batch: "vethXXX" and "vethXXX . <mac>".
//
// RA guard: no container on a Pier bridge may act as an IPv6 router for
// its neighbours or the node (CVE-2020-10749): router advertisements and
// redirects from Pier's host veths are dropped. The host veths are
// recognised by their device group, set when they are created, so the
// guard costs no element per container; the kernel here lacks `meta
// ibrname` (NFT_BRIDGE_META), which would have keyed it by bridge.
// accept_ra=0 on the bridge and the host veths covers the node itself too.
//
// The set "bridges" holds no policy: adding the bridge's name to it in
// every ADD batch (a no-op when present) makes that batch fail with ENOENT
// when someone flushed the table, and the slow path then puts the RA guard
// back.

const (
	l2Chain      = "prerouting"
	spoofPorts   = "macspoof-ports"
	spoofAllowed = "macspoof-allowed"
	bridgesSet   = "bridges"

	idSpoofPorts   = 21
	idSpoofAllowed = 22
	idBridges      = 23
)

// SpoofCheck is one bridge port's allowed source MAC.
type SpoofCheck struct {
	Port string // the host veth
	MAC  net.HardwareAddr
}

func l2Table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}
}

func spoofPortsSet() *nftables.Set {
	return &nftables.Set{Table: l2Table(), Name: spoofPorts, ID: idSpoofPorts, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, Comment: "pier: container ports whose source MAC is checked (macspoofchk)"}
}

func spoofAllowedSet() *nftables.Set {
	return &nftables.Set{Table: l2Table(), Name: spoofAllowed, ID: idSpoofAllowed, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr), Concatenation: true,
		KeyByteOrder: binaryutil.BigEndian, Comment: "pier: the source MAC each checked port may use"}
}

func bridgeSet() *nftables.Set {
	return &nftables.Set{Table: l2Table(), Name: bridgesSet, ID: idBridges, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, Comment: "pier: bridges with Pier attachments"}
}

// ifnameKey is an interface name as nftables compares it: IFNAMSIZ bytes,
// zero padded.
func ifnameKey(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func ifnameOf(key []byte) string {
	return unix.ByteSliceToString(key[:min(len(key), unix.IFNAMSIZ)])
}

func (s SpoofCheck) validate() error {
	if s.Port == "" || len(s.Port) >= unix.IFNAMSIZ || len(s.MAC) != 6 {
		return fmt.Errorf("spoof check %q %s: %w", s.Port, s.MAC, ErrInvalid)
	}
	return nil
}

func (s SpoofCheck) elements(comment string) (port, allowed nftables.SetElement) {
	mac := make([]byte, 8)
	copy(mac, s.MAC)
	return nftables.SetElement{Key: ifnameKey(s.Port), Comment: comment},
		nftables.SetElement{Key: concat(ifnameKey(s.Port), mac), Comment: comment}
}

// raGuardRule drops ICMPv6 messages of type typ (router advertisement,
// redirect) entering from a port in device group.
func raGuardRule(group uint32, typ byte, name string) rule {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFGROUP, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(group)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IPV6)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
	return rule{exprs: e, text: fmt.Sprintf("meta iifgroup %d icmpv6 type %s drop", group, name),
		comment: "pier: no container is a router (RA guard)"}
}

// spoofRule: "iifname @macspoof-ports iifname . ether saddr != @macspoof-allowed drop".
func spoofRule() rule {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: spoofPorts, SetID: idSpoofPorts},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Payload{DestRegister: 2, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Lookup{SourceRegister: 1, SetName: spoofAllowed, SetID: idSpoofAllowed, Invert: true},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
	return rule{exprs: e, text: "iifname @" + spoofPorts + " iifname . ether saddr != @" + spoofAllowed + " drop",
		comment: "pier: macspoofchk"}
}

// queueL2Setup queues table bridge pier with its sets and its chain,
// flushed and refilled.
func queueL2Setup(c *nftables.Conn, group uint32) error {
	c.AddTable(l2Table())
	for _, s := range []*nftables.Set{spoofPortsSet(), spoofAllowedSet(), bridgeSet()} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("queue set bridge %s %s: %w", TableName, s.Name, err)
		}
	}
	if err := queueSourceSetup(c); err != nil {
		return err
	}
	prio := nftables.ChainPriority(-300)
	ch := &nftables.Chain{Name: l2Chain, Table: l2Table(), Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: &prio}
	c.AddChain(ch)
	c.FlushChain(ch)
	for _, r := range []rule{
		raGuardRule(group, 134, "nd-router-advert"),
		raGuardRule(group, 137, "nd-redirect"),
		spoofRule(),
		jumpSourceRule(),
	} {
		c.AddRule(r.nftRule(ch))
	}
	return nil
}
