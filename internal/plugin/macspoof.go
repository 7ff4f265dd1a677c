package plugin

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/veth"
)

// This file checks the MAC spoof check (macspoofchk), an element of the
// node-wide set of (host veth, MAC) pairs allowed to send, and the source
// address check (ipspoofchk, always on with networkPolicy): the host veth
// in the set of checked ports and one (host veth, address) pair per
// address. Both are added in the ADD's one transaction (nftables.go).

// checkMacSpoof verifies that the MAC check lets the host veth send from
// the container's MAC in prevResult.
func (c *call) checkMacSpoof(mine nat.NodeElements, prev *current.Result, idx int) []error {
	if !c.conf.MacSpoofChk || idx < 0 {
		return nil
	}
	hostVeth := veth.HostName(c.args.ContainerID, c.args.IfName)
	mac, _ := net.ParseMAC(prev.Interfaces[idx].Mac)
	if !slices.ContainsFunc(mine.Spoof, func(e nat.SpoofElement) bool {
		return e.Port == hostVeth && e.MAC.String() == mac.String()
	}) {
		return []error{fmt.Errorf("MAC check: port %s may not send from %s (table bridge %s, set macspoof-allowed)", hostVeth, mac, nat.TableName)}
	}
	return nil
}

// checkSources verifies that the host veth's source addresses are checked
// and that it may send from each of the container's addresses in
// prevResult.
func (c *call) checkSources(mine nat.NodeElements, prev *current.Result, idx int) []error {
	if !c.conf.SourceCheck() || idx < 0 {
		return nil
	}
	hostVeth := veth.HostName(c.args.ContainerID, c.args.IfName)
	bound := func(a netip.Addr) bool {
		return slices.ContainsFunc(mine.Sources, func(e nat.SourceElement) bool { return e.Port == hostVeth && e.Addr == a })
	}
	var problems []error
	if !bound(netip.Addr{}) {
		problems = append(problems, fmt.Errorf("source address check: port %s is not checked (table bridge %s, set ipspoof-ports)", hostVeth, nat.TableName))
	}
	for _, ipc := range prev.IPs {
		p, ok := prefixOf(ipc)
		if ok && (ipc.Interface == nil || *ipc.Interface == idx) && !bound(p.Addr()) {
			problems = append(problems, fmt.Errorf("source address check: port %s may not send from %s (table bridge %s)", hostVeth, p.Addr(), nat.TableName))
		}
	}
	return problems
}
