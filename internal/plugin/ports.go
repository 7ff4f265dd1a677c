package plugin

import (
	"fmt"
	"net/netip"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
)

// This file resolves the host port mappings (portMappings capability)
// against the container's addresses and checks them. They are nftables
// elements of the node-wide sets, added in the ADD's one transaction
// (nftables.go).

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

// checkPortMappings verifies the host port mappings (DNAT and hairpin
// masquerade elements) the config asks for, against prevResult's
// addresses.
func (c *call) checkPortMappings(mine nat.NodeElements, prev *current.Result, idx int) []error {
	var problems []error
	want, err := c.portMappings(c.ownResult(prev, idx))
	if err != nil {
		return []error{err}
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
