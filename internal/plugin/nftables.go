package plugin

import (
	"context"
	"errors"
	"slices"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodestate"
	"github.com/pier-cni/pier/internal/veth"
)

// This file is the attachment's nftables work: masquerade elements, host
// port mappings, the MAC check and network policy elements in one
// transaction per ADD, with the
// attachment's record; and the removal, check and GC of the node-wide
// elements (host ports, MAC check), which name the attachment as owner.

// configureNAT puts the attachment's masquerade elements, port mappings and
// MAC check in nftables, in one transaction, with the bridge's marker (see
// package nat): when that batch fails, the slow path rebuilds what is
// missing; afterAdd sets the bridge up when its marker is missing, and
// puts the network back after a slow path. The
// attachment's record is written first, so a flush at any later moment
// finds it.
func (c *call) configureNAT(res *current.Result, h hostSide, undo *undoStack) error {
	ports, err := c.portMappings(res)
	if err != nil {
		return err
	}
	network, addrs := c.masqTarget(res)
	att := nat.Attachment{Network: network, Owner: c.owner(), Ports: ports, GuardGroup: veth.PortGroup, Bridge: h.bridge}
	if c.conf.IPMasq {
		att.Masq = addrs
	}
	if c.conf.MacSpoofChk {
		att.Spoof = &nat.SpoofCheck{Port: h.veth.Host.Attrs().Name, MAC: h.veth.Container.Attrs().HardwareAddr}
	}
	if c.conf.SourceCheck() {
		att.Sources = &nat.SourceCheck{Port: h.veth.Host.Attrs().Name, Addrs: addrs}
	}
	policy := c.policyAttachment(addrs)
	if policy != nil {
		att.Extra = policy
	}
	rec, err := c.record(att, h.veth.Host.Attrs().Name)
	if err == nil {
		err = nodestate.WriteRecord(c.stateRoot(), rec)
	}
	if err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot record the attachment's nftables state")
	}
	remove := func() error {
		return nodestate.RemoveRecord(c.stateRoot(), c.conf.Name, c.owner(), func() error {
			return errors.Join(nat.Detach(nat.Detachment{Network: network, Masq: att.Masq, Sources: att.Sources}), c.delNodeElements(), c.delPolicy(addrs))
		})
	}
	out, err := nat.Add(att)
	if err != nil {
		err = errors.Join(err, remove()) // nothing of the batch is in; the record goes
		if errors.Is(err, nat.ErrPortConflict) {
			return cnierr.Wrap(err, cnierr.PortConflict, "cannot map the host ports of %s", c.owner())
		}
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot set up nftables for network %s", c.conf.Name)
	}
	undo.push("remove nftables elements and record", remove)
	if err := c.afterAdd(out, h.bridge); err != nil {
		return err
	}
	// After the elements: a release of route_localnet looks at them after
	// turning it off (see nodestate.EnableLocalnet). Without the guard (a
	// kernel without cls_bpf, say) the sysctl stays off: the host ports
	// work but for the node's own clients at 127.0.0.1.
	if slices.ContainsFunc(ports, func(m nat.PortMapping) bool { return m.ContainerIP.Is4() }) {
		if err := nodestate.EnableLocalnet(c.nodeLock, h.bridge); err != nil {
			c.log.Warn("the node cannot reach these host ports at 127.0.0.1: route_localnet stays off on the bridge without its guard",
				"bridge", h.bridge, "err", err)
		}
	}
	c.logPolicy(policy)
	c.forgetUDPFlows(ports)
	return nil
}

// usesNodeElements reports whether the config asks for node-wide nftables
// elements (host ports, MAC check) that DEL must look for.
func (c *call) usesNodeElements() bool {
	return len(c.conf.RuntimeConfig.PortMappings) > 0 || c.conf.MacSpoofChk
}

// delNodeElements removes the attachment's host port and MAC check
// elements. It reads the sets, so it runs only when the config uses them;
// GC reclaims what a DEL with another config left.
func (c *call) delNodeElements(opts ...nat.Option) error {
	if !c.usesNodeElements() {
		return nil
	}
	if err := nat.DelOwned(c.conf.Name, c.owner(), opts...); err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot remove the host ports and MAC check of %s", c.owner())
	}
	c.forgetUDPFlows(c.configuredUDPPorts())
	return nil
}

// checkNodeElements verifies the attachment's node-wide nftables elements
// against prevResult: its MAC and source address checks and its host port
// mappings. It reads
// the sets once, and only when the config uses them.
func (c *call) checkNodeElements(prev *current.Result, idx int) []error {
	if !c.usesNodeElements() && !c.conf.SourceCheck() {
		return nil
	}
	have, err := nat.ListNodeElements()
	if err != nil {
		return []error{err}
	}
	mine := have.Owned(nat.NodeOwner(c.conf.Name, c.owner()))
	problems := c.checkMacSpoof(mine, prev, idx)
	problems = append(problems, c.checkSources(mine, prev, idx)...)
	return append(problems, c.checkPortMappings(mine, prev, idx)...)
}

// gcNodeElements removes the host port, MAC and source check elements of this
// network that no valid attachment owns. Like masquerade elements, a port
// element whose container address IPAM holds for a valid attachment is
// kept whatever its comment says.
func (c *call) gcNodeElements(ctx context.Context, valid map[string]bool) []error {
	all, err := nat.ListNodeElements()
	if err != nil {
		return []error{err}
	}
	if all.Len() == 0 {
		return nil
	}
	heldByValid, err := c.ipam.HeldByValid(ctx)
	if err != nil {
		return []error{err}
	}
	prefix := c.conf.Name + "/"
	stale := all.Filter(func(owner string) bool { return strings.HasPrefix(owner, prefix) && !valid[owner] })
	stale.Ports = slices.DeleteFunc(stale.Ports, func(e nat.PortElement) bool { return heldByValid[e.ContainerIP] })
	stale.Hairpin = slices.DeleteFunc(stale.Hairpin, func(e nat.HairpinElement) bool { return heldByValid[e.ContainerIP] })
	if stale.Len() == 0 {
		return nil
	}
	c.log.Info("GC: removing host port, MAC and source check elements", "count", stale.Len())
	if err := nat.RemoveNodeElements(stale); err != nil {
		return []error{err}
	}
	return nil
}
