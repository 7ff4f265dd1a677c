package config

import "github.com/pier-cni/pier/internal/cnierr"

// The host firewall keys, modelled on the reference firewall plugin's
// "backend" and "ingressPolicy".
const (
	// FirewallAuto (the default) makes the node's own filters that drop
	// forwarded traffic (iptables FORWARD, Docker's DOCKER-USER, an
	// nftables forward chain, firewalld) accept the bridge's traffic.
	FirewallAuto = "auto"
	// FirewallNone leaves the node's filters alone.
	FirewallNone = "none"
	// IngressOpen (the default) adds no restriction of Pier's own.
	IngressOpen = "open"
	// IngressSameBridge drops new connections into the bridge from any
	// other interface; replies and host ports pass.
	IngressSameBridge = "same-bridge"
)

// validateFirewall checks firewallBackend and ingressPolicy: a value Pier
// cannot honour (the reference's "iptables", "firewalld" or "isolated")
// is code 2, never silently taken for another.
func (n *NetConf) validateFirewall() error {
	switch n.FirewallBackend {
	case "", FirewallAuto, FirewallNone:
	default:
		return cnierr.New(cnierr.UnsupportedField, `"firewallBackend": %q is not supported (%q: Pier finds the node's filters itself, or %q)`, n.FirewallBackend, FirewallAuto, FirewallNone)
	}
	switch n.IngressPolicy {
	case "", IngressOpen, IngressSameBridge:
	default:
		return cnierr.New(cnierr.UnsupportedField, `"ingressPolicy": %q is not supported (%q or %q)`, n.IngressPolicy, IngressOpen, IngressSameBridge)
	}
	return nil
}

// OpensHostFirewall reports whether Pier makes the node's filters accept
// the bridge's traffic.
func (n *NetConf) OpensHostFirewall() bool { return n.FirewallBackend != FirewallNone }

// SameBridge reports ingressPolicy same-bridge.
func (n *NetConf) SameBridge() bool { return n.IngressPolicy == IngressSameBridge }
