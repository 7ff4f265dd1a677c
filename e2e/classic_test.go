package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	types020 "github.com/containernetworking/cni/pkg/types/020"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
)

// classicConf is the classic bridge experiment's config — the reference
// bridge plugin's usual example with host-local IPAM — with "type": "pier"
// and "pier-ipam".
func classicConf(version, dataDir string) string {
	return fmt.Sprintf(`{ "cniVersion": %q, "name": "mybridge", "type": "pier",
  "bridge": "cni_bridge0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": { "type": "pier-ipam", "subnet": "10.15.20.0/24", "dataDir": %q,
            "routes": [ { "dst": "0.0.0.0/0" }, { "dst": "1.1.1.1/32", "gw": "10.15.20.1" } ] } }`, version, dataDir)
}

// TestClassicExperiment checks, for each spec version the classic config is
// written in, what the reference bridge plugin leaves behind and Pier must
// too: the bridge up with the gateway and forwarding on; the veth pair with
// the container's address and both routes, the host end enslaved with
// hairpin; the masquerade traceable to the network and container; the
// result in the config's version; two containers reaching each other
// through the bridge; and DEL undoing all of it.
func TestClassicExperiment(t *testing.T) {
	for _, v := range []string{"0.2.0", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			n := newNode(t)
			conf := classicConf(v, n.dataDir)
			c1, c2 := n.container("c1-"+v), n.container("c2-"+v)

			out := n.mustAdd(c1, conf)
			checkResultVersion(t, v, out, "10.15.20.2/24", "10.15.20.1")
			n.mustAdd(c2, conf)

			// 1. the bridge, up, with the gateway; forwarding on in the node.
			br := ipJSON[[]ipLink](t, n.sb.Node, "addr", "show", "dev", "cni_bridge0")
			if len(br) != 1 || !slices.Contains(br[0].Flags, "UP") || !slices.Contains(br[0].addrs("inet"), "10.15.20.1/24") {
				t.Fatalf("bridge cni_bridge0: want up with 10.15.20.1/24, got %+v", br)
			}
			if fwd := strings.TrimSpace(n.sb.Node.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward")); fwd != "1" {
				t.Fatalf("node ip_forward = %s, want 1", fwd)
			}
			// 2. the container side: address and routes.
			eth0 := ipJSON[[]ipLink](t, c1.ns, "addr", "show", "dev", "eth0")
			if got := eth0[0].addrs("inet"); !slices.Equal(got, []string{"10.15.20.2/24"}) {
				t.Fatalf("c1 eth0 addresses %v, want [10.15.20.2/24]", got)
			}
			routes := ipJSON[[]ipRoute](t, c1.ns, "route", "show")
			for _, want := range []ipRoute{{"default", "10.15.20.1", "eth0"}, {"1.1.1.1", "10.15.20.1", "eth0"}} {
				if !slices.Contains(routes, want) {
					t.Fatalf("c1 routes %+v lack %+v", routes, want)
				}
			}
			// 2. the host ends: ports of the bridge, hairpin on, traceable.
			ports := bridgePorts(t, n.sb.Node, "cni_bridge0")
			if len(ports) != 2 {
				t.Fatalf("bridge has %d ports, want 2: %+v", len(ports), ports)
			}
			for _, p := range ports {
				if !p.LinkInfo.InfoSlaveData.Hairpin || !strings.HasPrefix(p.IfAlias, "pier:mybridge:") {
					t.Fatalf("port %s: hairpin %v alias %q", p.IfName, p.LinkInfo.InfoSlaveData.Hairpin, p.IfAlias)
				}
			}
			// 3. NAT: one element per container, traceable to its id.
			elems := masqElements(t, n.sb.Node, "mybridge-masq4")
			if len(elems) != 2 || !strings.Contains(strings.Join(elems, " "), "c1-"+v) {
				t.Fatalf("masquerade set: %v", elems)
			}
			// 5. container ↔ container through the bridge.
			c2.ns.MustRun(t, "ping", "-c1", "-W2", "10.15.20.2")
			c1.ns.MustRun(t, "ping", "-c1", "-W2", "10.15.20.3")

			n.mustDel(c1, conf)
			n.mustDel(c2, conf)
			assertNothingLeft(t, n, conf, "cni_bridge0", "mybridge-masq4")
		})
	}
}

// checkResultVersion decodes an ADD result with the CNI library's type for
// its version and checks the container's address and gateway.
func checkResultVersion(t *testing.T, version, out, wantAddr, wantGW string) {
	t.Helper()
	var got struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.CNIVersion != version {
		t.Fatalf("result cniVersion %q (err %v), want %q:\n%s", got.CNIVersion, err, version, out)
	}
	var addr, gw string
	switch version {
	case "0.1.0", "0.2.0":
		var r types020.Result
		mustDecode(t, out, &r)
		addr, gw = r.IP4.IP.String(), r.IP4.Gateway.String()
	case "0.3.0", "0.3.1", "0.4.0":
		var r types040.Result
		mustDecode(t, out, &r)
		if len(r.IPs) != 1 || len(r.Interfaces) != 3 || r.IPs[0].Interface == nil || *r.IPs[0].Interface != 2 {
			t.Fatalf("0.4.0 result shape: %s", out)
		}
		addr, gw = r.IPs[0].Address.String(), r.IPs[0].Gateway.String()
	default:
		var r current.Result
		mustDecode(t, out, &r)
		if len(r.IPs) != 1 || len(r.Interfaces) != 3 || r.Interfaces[2].Sandbox == "" {
			t.Fatalf("%s result shape: %s", version, out)
		}
		addr, gw = r.IPs[0].Address.String(), r.IPs[0].Gateway.String()
	}
	if addr != wantAddr || gw != wantGW {
		t.Fatalf("result address %s gateway %s, want %s %s:\n%s", addr, gw, wantAddr, wantGW, out)
	}
}

func mustDecode(t *testing.T, s string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("result does not decode as %T: %v\n%s", v, err, s)
	}
}

// reservations lists the IPAM store's reservations for a config, through
// the same code the plugin uses.
func reservations(t *testing.T, conf string) []ipam.Reservation {
	t.Helper()
	ic, err := config.LoadIPAM([]byte(conf), "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := ipam.NewLocal(ic.DataDir, ipam.LocalOptions{}).List(context.Background(), ic)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// assertNothingLeft checks that after DEL only the bridge remains: no port,
// no reservation, no masquerade element.
func assertNothingLeft(t *testing.T, n *node, conf, bridge, set string) {
	t.Helper()
	if ports := bridgePorts(t, n.sb.Node, bridge); len(ports) != 0 {
		t.Errorf("bridge %s still has ports: %+v", bridge, ports)
	}
	// Veths of other bridges (another network in the same test) are not
	// this network's business; a veth on no bridge would be a leak.
	for _, l := range ipJSON[[]ipLink](t, n.sb.Node, "link", "show", "type", "veth") {
		if l.Master == "" || l.Master == bridge {
			t.Errorf("veth left in the node: %+v", l)
		}
	}
	if res := reservations(t, conf); len(res) != 0 {
		t.Errorf("reservations left: %+v", res)
	}
	if elems := masqElements(t, n.sb.Node, set); len(elems) != 0 {
		t.Errorf("masquerade elements left: %v", elems)
	}
}
