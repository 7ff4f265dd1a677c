package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodestate"
	"github.com/pier-cni/pier/internal/shaping"
	"github.com/pier-cni/pier/internal/veth"
)

// This file holds the attachment's optional node-side features — port
// mappings, bandwidth limits, the MAC spoof check — and the nftables work
// they share with masquerade: one transaction per ADD for all of it.

// limits converts the config's bandwidth to the shaper's; zero when none.
func (c *call) limits() shaping.Limits {
	b := c.conf.Bandwidth
	if b == nil {
		return shaping.Limits{}
	}
	return shaping.Limits{IngressRate: b.IngressRate, IngressBurst: b.IngressBurst, EgressRate: b.EgressRate, EgressBurst: b.EgressBurst}
}

// applyLimits shapes the container's traffic and returns the ifb device
// the egress limit uses (nil without one), for the result.
func (c *call) applyLimits(pair *veth.Pair, undo *undoStack) (*current.Interface, error) {
	lim := c.limits()
	if lim.IngressRate == 0 && lim.EgressRate == 0 {
		return nil, nil
	}
	ifb, err := shaping.Apply(pair.Host, lim)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "cannot apply bandwidth limits")
	}
	name := pair.Host.Attrs().Name
	undo.push("remove bandwidth limits of "+name, func() error { return shaping.Remove(name) })
	if ifb == nil {
		return nil, nil
	}
	return &current.Interface{Name: ifb.Attrs().Name, Mac: ifb.Attrs().HardwareAddr.String()}, nil
}

// portMappings resolves the config's mappings against the container's
// addresses: one mapping per family the mapping applies to (all, or its
// hostIP's), to the container's first address of that family. A mapping
// to a host address of a family the container lacks cannot be honoured;
// one to 0.0.0.0 or :: asks for nothing there, and is skipped as the
// reference skips it (some runtimes send 0.0.0.0 for "any").
func (c *call) portMappings(res *current.Result) ([]nat.PortMapping, error) {
	var out []nat.PortMapping
	for i, pm := range c.conf.RuntimeConfig.PortMappings {
		matched := false
		for _, fam := range []bool{true, false} { // IPv4, then IPv6
			if pm.HostAddr.IsValid() && pm.HostAddr.Is4() != fam {
				continue
			}
			p, ok := firstOfFamily(res, fam)
			if !ok {
				continue
			}
			matched = true
			out = append(out, nat.PortMapping{Protocol: pm.Protocol, HostPort: uint16(pm.HostPort), HostIP: pm.HostAddr,
				ContainerIP: p.Addr(), ContainerPort: uint16(pm.ContainerPort), Subnet: p.Masked()})
		}
		switch {
		case !matched && pm.HostAddr.IsUnspecified():
			c.log.Debug("port mapping skipped: the container has no address of its hostIP's family", "mapping", i, "hostIP", pm.HostIP)
		case !matched:
			return nil, cnierr.New(cnierr.InvalidConfig, "runtimeConfig.portMappings[%d]: hostIP %s: the container has no address of its family", i, pm.HostIP)
		}
	}
	return out, nil
}

func firstOfFamily(res *current.Result, v4 bool) (netip.Prefix, bool) {
	for _, ipc := range res.IPs {
		if p, ok := prefixOf(ipc); ok && p.Addr().Is4() == v4 {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// configureNAT puts the attachment's masquerade elements, port mappings and
// MAC check in nftables, in one transaction, with the bridge's marker (see
// package nat): when that batch fails, the slow path rebuilds what is
// missing, and afterAdd sets the bridge up or puts the network back. The
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
	if slices.ContainsFunc(ports, func(m nat.PortMapping) bool { return m.ContainerIP.Is4() }) {
		if err := bridge.EnableRouteLocalnet(h.bridge); err != nil {
			return cnierr.Wrap(err, cnierr.IOFailure, "cannot map host ports")
		}
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
			return errors.Join(nat.DelMasq(network, att.Masq), c.delNodeElements())
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
	c.forgetUDPFlows(ports)
	return nil
}

// forgetUDPFlows drops conntrack entries that would keep UDP clients of
// the host ports away from their mapping (see nat.ForgetUDPFlows). A
// failure is logged: the mapping itself is in place.
func (c *call) forgetUDPFlows(ports []nat.PortMapping) {
	if err := nat.ForgetUDPFlows(ports); err != nil {
		c.log.Warn("stale UDP conntrack entries of host ports remain", "err", err)
	}
}

// configuredUDPPorts are the config's UDP mappings in every family they
// may have been mapped in, for DEL, which may no longer know the
// container's addresses.
func (c *call) configuredUDPPorts() []nat.PortMapping {
	var out []nat.PortMapping
	for _, pm := range c.conf.RuntimeConfig.PortMappings {
		if pm.Protocol != "udp" {
			continue
		}
		for _, a := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
			if !pm.HostAddr.IsValid() || pm.HostAddr.Is4() == a.Is4() {
				out = append(out, nat.PortMapping{Protocol: "udp", HostPort: uint16(pm.HostPort), ContainerIP: a})
			}
		}
	}
	return out
}

// usesNodeElements reports whether the config asks for node-wide nftables
// elements (host ports, MAC check) that DEL must look for.
func (c *call) usesNodeElements() bool {
	return len(c.conf.RuntimeConfig.PortMappings) > 0 || c.conf.MacSpoofChk
}

// delNodeElements removes the attachment's host port and MAC check
// elements. It reads the sets, so it runs only when the config uses them;
// GC reclaims what a DEL with another config left.
func (c *call) delNodeElements() error {
	if !c.usesNodeElements() {
		return nil
	}
	if err := nat.DelOwned(c.conf.Name, c.owner()); err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot remove the host ports and MAC check of %s", c.owner())
	}
	c.forgetUDPFlows(c.configuredUDPPorts())
	return nil
}

// removeLimits deletes the ifb of the egress limit (DEL policy: a missing
// one is fine).
func (c *call) removeLimits() error {
	if c.limits().EgressRate == 0 {
		return nil
	}
	return shaping.Remove(veth.HostName(c.args.ContainerID, c.args.IfName))
}

// concurrently runs fns side by side and returns a function that waits for
// them and joins their errors.
func concurrently(fns ...func() error) (wait func() error) {
	errc := make(chan error, len(fns))
	for _, f := range fns {
		go func() { errc <- f() }()
	}
	return func() error {
		var errs []error
		for range fns {
			errs = append(errs, <-errc)
		}
		return errors.Join(errs...)
	}
}

// checkFeatures verifies the host ports, MAC check and bandwidth limits
// of the attachment against prevResult.
func (c *call) checkFeatures(prev *current.Result, idx int) []error {
	var problems []error
	hostVeth := veth.HostName(c.args.ContainerID, c.args.IfName)
	if lim := c.limits(); lim != (shaping.Limits{}) {
		problems = append(problems, shaping.Check(hostVeth, lim)...)
	}
	if !c.usesNodeElements() {
		return problems
	}
	have, err := nat.ListNodeElements()
	if err != nil {
		return append(problems, err)
	}
	mine := have.Owned(nat.NodeOwner(c.conf.Name, c.owner()))
	if c.conf.MacSpoofChk && idx >= 0 {
		mac, _ := net.ParseMAC(prev.Interfaces[idx].Mac)
		if !slices.ContainsFunc(mine.Spoof, func(e nat.SpoofElement) bool {
			return e.Port == hostVeth && e.MAC.String() == mac.String()
		}) {
			problems = append(problems, fmt.Errorf("MAC check: port %s may not send from %s (table bridge %s, set macspoof-allowed)", hostVeth, mac, nat.TableName))
		}
	}
	want, err := c.portMappings(c.ownResult(prev, idx))
	if err != nil {
		return append(problems, err)
	}
	for _, m := range want {
		host := m.HostIP
		if host.IsValid() && host.IsUnspecified() {
			host = netip.Addr{} // stored in the wildcard map
		}
		if !slices.ContainsFunc(mine.Ports, func(e nat.PortElement) bool {
			return e.Protocol == m.Protocol && e.HostPort == m.HostPort && e.HostIP == host &&
				e.ContainerIP == m.ContainerIP && e.ContainerPort == m.ContainerPort
		}) {
			problems = append(problems, fmt.Errorf("host port mapping %s of %s is missing", m, c.owner()))
		}
		if !slices.ContainsFunc(mine.Hairpin, func(e nat.HairpinElement) bool {
			return e.ContainerIP == m.ContainerIP && e.Protocol == m.Protocol && e.ContainerPort == m.ContainerPort && m.Subnet.Contains(e.First)
		}) {
			problems = append(problems, fmt.Errorf("hairpin masquerade of host port mapping %s is missing", m))
		}
	}
	return problems
}

// ownResult is prev restricted to this attachment's addresses.
func (c *call) ownResult(prev *current.Result, idx int) *current.Result {
	out := &current.Result{}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == idx {
			out.IPs = append(out.IPs, ipc)
		}
	}
	return out
}

// gcNodeElements removes the host port and MAC check elements of this
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
	c.log.Info("GC: removing host port and MAC check elements", "count", stale.Len())
	if err := nat.RemoveNodeElements(stale); err != nil {
		return []error{err}
	}
	return nil
}

// gcIfbs deletes ifb devices whose host veth is gone.
func (c *call) gcIfbs() []error {
	names, err := shaping.OrphanIfbs()
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, name := range names {
		c.log.Info("GC: deleting ifb", "ifb", name)
		if err := shaping.DeleteIfb(name); err != nil {
			errs = append(errs, fmt.Errorf("delete ifb %s: %w", name, err))
		}
	}
	return errs
}
