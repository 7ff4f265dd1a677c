package config

import (
	"fmt"
	"math"
	"net/netip"
	"strings"

	"github.com/pier-cni/pier/internal/cnierr"
)

// PortMapping is one entry of the portMappings capability
// (runtimeConfig.portMappings), as Kubernetes and the reference portmap
// plugin write it. After LoadNetConf, Protocol is lower case and HostAddr
// holds the parsed HostIP.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`

	// HostAddr is HostIP parsed; invalid when HostIP is empty. An
	// unspecified address (0.0.0.0, ::) restricts the mapping to its
	// family without restricting the address, as with the reference.
	HostAddr netip.Addr `json:"-"`
}

// Bandwidth is the bandwidth capability (runtimeConfig.bandwidth) or the
// reference bandwidth plugin's top-level keys: rates in bits per second,
// bursts in bits. Ingress is traffic into the container, egress traffic out
// of it. A zero rate means no limit in that direction.
type Bandwidth struct {
	IngressRate  uint64 `json:"ingressRate"`
	IngressBurst uint64 `json:"ingressBurst"`
	EgressRate   uint64 `json:"egressRate"`
	EgressBurst  uint64 `json:"egressBurst"`
}

// IsZero reports whether b limits nothing.
func (b Bandwidth) IsZero() bool { return b == Bandwidth{} }

// portProtocols are the protocols a mapping may name; nftables matches the
// destination port at the same offset for all three.
var portProtocols = map[string]bool{"tcp": true, "udp": true, "sctp": true}

// resolveFeatures validates and normalises the port mappings and picks the
// bandwidth limits: the top-level keys when any is set, else
// runtimeConfig.bandwidth, as the reference bandwidth plugin does.
func (n *NetConf) resolveFeatures() error {
	if err := n.resolvePortMappings(); err != nil {
		return err
	}
	bw, key := n.RuntimeConfig.Bandwidth, "runtimeConfig.bandwidth"
	if n.IngressRate != nil || n.IngressBurst != nil || n.EgressRate != nil || n.EgressBurst != nil {
		bw = &Bandwidth{IngressRate: deref(n.IngressRate), IngressBurst: deref(n.IngressBurst),
			EgressRate: deref(n.EgressRate), EgressBurst: deref(n.EgressBurst)}
		key = "ingressRate/ingressBurst/egressRate/egressBurst"
	}
	if bw == nil || bw.IsZero() {
		n.Bandwidth = nil
		return nil
	}
	for _, d := range []struct {
		dir         string
		rate, burst uint64
	}{{"ingress", bw.IngressRate, bw.IngressBurst}, {"egress", bw.EgressRate, bw.EgressBurst}} {
		if err := validateRateAndBurst(key, d.dir, d.rate, d.burst); err != nil {
			return err
		}
	}
	n.Bandwidth = bw
	return nil
}

func deref(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}

// validateRateAndBurst applies the reference's rules (a rate needs a burst
// and the other way round; the burst in bytes fits 32 bits) and refuses a
// rate under one byte per second, which tc cannot express.
func validateRateAndBurst(key, dir string, rate, burst uint64) error {
	switch {
	case rate == 0 && burst == 0:
		return nil
	case rate == 0 || burst == 0:
		return cnierr.New(cnierr.InvalidConfig, "%s: %sRate %d and %sBurst %d: set both or neither", key, dir, rate, dir, burst)
	case rate < 8:
		return cnierr.New(cnierr.InvalidConfig, "%s: %sRate %d bits/s is below 8 (one byte per second)", key, dir, rate)
	case burst/8 >= math.MaxUint32:
		return cnierr.New(cnierr.InvalidConfig, "%s: %sBurst %d bits is 4 GiB or more", key, dir, burst)
	}
	return nil
}

// resolvePortMappings checks every mapping and drops exact duplicates. Two
// mappings of the same host port, protocol and host address to different
// targets are a contradiction in the request itself, refused here; the
// same port already mapped by another container is found by the kernel
// at ADD (code 104).
func (n *NetConf) resolvePortMappings() error {
	seen := map[string]PortMapping{}
	var out []PortMapping
	for i, pm := range n.RuntimeConfig.PortMappings {
		where := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
		pm.Protocol = strings.ToLower(pm.Protocol)
		if pm.Protocol == "" {
			pm.Protocol = "tcp" // Kubernetes' default for a port
		}
		if !portProtocols[pm.Protocol] {
			return cnierr.New(cnierr.UnsupportedField, "%s: protocol %q is not supported (tcp, udp or sctp)", where, pm.Protocol)
		}
		if pm.HostPort < 1 || pm.HostPort > 65535 {
			return cnierr.New(cnierr.InvalidConfig, "%s: hostPort %d is out of range (1..65535)", where, pm.HostPort)
		}
		if pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return cnierr.New(cnierr.InvalidConfig, "%s: containerPort %d is out of range (1..65535)", where, pm.ContainerPort)
		}
		if pm.HostIP != "" {
			a, err := netip.ParseAddr(pm.HostIP)
			if err != nil || a.Zone() != "" {
				return cnierr.New(cnierr.InvalidConfig, "%s: hostIP %q is not an IP address", where, pm.HostIP)
			}
			pm.HostAddr = a.Unmap()
		}
		fresh := false
		for _, dst := range pm.destinations() {
			key := fmt.Sprintf("%s/%d@%s", pm.Protocol, pm.HostPort, dst)
			prev, dup := seen[key]
			if dup && prev.ContainerPort != pm.ContainerPort {
				return cnierr.New(cnierr.InvalidConfig, "%s: host port %s/%d (%s) is mapped twice, to container ports %d and %d", where, pm.Protocol, pm.HostPort, dst, prev.ContainerPort, pm.ContainerPort)
			}
			if !dup {
				seen[key], fresh = pm, true
			}
		}
		if fresh {
			out = append(out, pm)
		}
	}
	n.RuntimeConfig.PortMappings = out
	return nil
}

// destinations names the host addresses a mapping claims, one per family
// it applies to: "any IPv4", "any IPv6" or one address.
func (pm PortMapping) destinations() []string {
	switch {
	case !pm.HostAddr.IsValid():
		return []string{"any IPv4", "any IPv6"}
	case pm.HostAddr.IsUnspecified() && pm.HostAddr.Is4():
		return []string{"any IPv4"}
	case pm.HostAddr.IsUnspecified():
		return []string{"any IPv6"}
	}
	return []string{pm.HostAddr.String()}
}
