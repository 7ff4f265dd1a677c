package inspect

import (
	"fmt"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/firewall"
	"github.com/pier-cni/pier/internal/localnet"
	"github.com/pier-cni/pier/internal/nat"
)

// readBridgeSetup explains the bridge's MTU and what was done for it
// outside the container: its marker, isolation and the host's filters.
func (v *view) readBridgeSetup(b *Bridge) {
	c := v.conf
	switch {
	case c.MTU != 0:
		b.MTUWhy = fmt.Sprintf(`"mtu": %d in the config`, c.MTU)
	default:
		up, err := bridge.UplinkMTU()
		switch {
		case err != nil:
			b.MTUWhy = fmt.Sprintf(`"mtu" unset; the node's uplink cannot be read: %v`, err)
		case up.Name == "":
			b.MTUWhy = `"mtu" unset and the node has no default route: the kernel's default`
		case up.MTU == b.MTU:
			b.MTUWhy = fmt.Sprintf(`"mtu" unset: the MTU of %s, taken when the bridge was created`, up.Why)
		default:
			b.MTUWhy = fmt.Sprintf(`"mtu" unset; %s has MTU %d now, the bridge kept what it had when it was created (or someone set it)`, up.Why, up.MTU)
		}
	}
	st, err := nat.ReadBridge(c.Bridge)
	if err != nil {
		v.problem("setup of bridge %s: %v", c.Bridge, err)
		return
	}
	if !st.Ready {
		v.problem("bridge %s has no marker in table inet %s: its node-side setup is missing (the next ADD, CHECK or GC, or pierd, puts it back)", c.Bridge, nat.TableName)
	} else {
		b.Setup = append(b.Setup, Item{Value: "marker " + c.Bridge + ".bridge", Why: "the bridge's node-side setup is done: " + st.Note})
	}
	if st.Isolated {
		b.Setup = append(b.Setup, Item{Value: "ingressPolicy same-bridge", Why: "new connections into the bridge from other interfaces are dropped (table inet pier, chain forward); replies and host ports pass"})
	}
	v.readLocalnet(b)
	if !c.OpensHostFirewall() {
		b.Setup = append(b.Setup, Item{Value: "host filters left alone", Why: `"firewallBackend": "none"`})
		return
	}
	places, err := firewall.New().Scan(c.Bridge)
	if err != nil {
		v.problem("the node's filters: %v", err)
	}
	if len(places) == 0 {
		b.Setup = append(b.Setup, Item{Value: "host filters: nothing to open", Why: "no filter of the node drops forwarded traffic"})
	}
	for _, p := range places {
		if p.LeftAlone {
			b.Setup = append(b.Setup, Item{Value: p.Backend + " " + p.Where + " (left alone)", Why: p.Why})
			continue
		}
		if !p.Present {
			v.problem("%s: the accepts of bridge %s are missing (the next ADD, CHECK or GC, or pierd, puts them back)", p, c.Bridge)
			continue
		}
		b.Setup = append(b.Setup, Item{Value: p.Backend + " " + p.Where,
			Why: p.Why + ": Pier accepts the bridge's traffic there (from it; replies and host ports to it)"})
	}
}

// readLocalnet explains the bridge's route_localnet and its guard.
func (v *view) readLocalnet(b *Bridge) {
	bridge := v.conf.Bridge
	on, err := localnet.Enabled(bridge)
	if err != nil || !on {
		if err != nil {
			v.problem("route_localnet of bridge %s: %v", bridge, err)
		}
		return
	}
	guarded, err := localnet.Present(bridge)
	switch {
	case err != nil:
		v.problem("localnet guard of bridge %s: %v", bridge, err)
	case !guarded:
		v.problem("bridge %s has route_localnet on without its guard (tc filter %s): containers may reach the node's 127.0.0.1 services; the next CHECK or GC, or pierd, puts the guard on", bridge, localnet.Name)
	default:
		b.Setup = append(b.Setup, Item{Value: "route_localnet on, tc filter " + localnet.Name + " on its ingress",
			Why: "a host port of the node leads behind the bridge: the node reaches it at 127.0.0.1, and the guard keeps containers from the node's 127.0.0.0/8"})
	}
}
