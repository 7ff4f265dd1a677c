package plugin

import (
	"fmt"
	"net"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/veth"
)

// This file checks the MAC spoof check (macspoofchk): an element of the
// node-wide set of (host veth, MAC) pairs allowed to send, added in the
// ADD's one transaction (nftables.go).

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
