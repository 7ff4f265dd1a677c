package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/inspect"
	"github.com/pier-cni/pier/internal/leases"
)

// ctlNetConf is a 1.1.0 list (GC and STATUS exist from 1.1.0) with pier
// alone. No plugin declares portMappings (pier refuses port mappings, and
// the reference portmap stops at 1.0.0), so libcni passes --port-mapping to
// none but caches it, and inspect says so.
func ctlNetConf(name, bridge, subnet, dataDir string) string {
	return fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": %q, "plugins": [
  { "type": "pier", "bridge": %q, "isGateway": true, "ipMasq": true, "hairpinMode": true,
    "ipam": { "type": "pier-ipam", "subnet": %q, "dataDir": %q, "routes": [ { "dst": "0.0.0.0/0" } ] } } ] }`, name, bridge, subnet, dataDir)
}

// TestPierctlLifecycle drives add, check, status, leases, inspect, gc and
// del through pierctl in a node namespace, as an operator would. Its core is
// the gc safety property: an attachment in libcni's cache survives `pierctl
// gc`, while one no cache knows is collected.
func TestPierctlLifecycle(t *testing.T) {
	c := newCtlEnv(t)
	c.writeConf("10-ctlnet.conflist", ctlNetConf("ctlnet", "ctl0", "10.77.0.0/24", c.dataDir))
	live, stale := c.sb.Container(), c.sb.Container()

	res := c.mustCtl(0, c.withDirs("add", "ctlnet", live.Path, "--container-id", "live-1", "--port-mapping", "8080:80/tcp")...)
	if !strings.Contains(res.stdout, `"10.77.0.2/24"`) {
		t.Fatalf("add result lacks the address:\n%s", res.stdout)
	}
	c.mustCtl(0, c.withDirs("check", "ctlnet", live.Path, "--container-id", "live-1")...)

	// An attachment made behind libcni's back (no cache entry): what a
	// runtime that lost track of a container leaves.
	staleAtt := attachment{ns: stale, id: "stale-1", ifName: "eth0"}
	c.mustAdd(staleAtt, ctlPlugin(t, c))

	checkStatus(t, c, 2)
	ls := c.mustCtl(0, "leases", "--conf-dir", c.confDir, "-o", "json")
	if got := ctlJSON[[]map[string]any](t, ls); len(got) != 2 {
		t.Fatalf("leases: %s", ls.stdout)
	}
	checkInspectLive(t, c, live.Path)
	checkInspectStale(t, c, stale.Path)

	out := c.mustCtl(0, c.withDirs("gc", "ctlnet")...)
	if !strings.Contains(out.stdout, "live-1/eth0") {
		t.Fatalf("gc does not say it kept live-1: %s", out.stdout)
	}
	// live-1 survives with everything; stale-1 is gone.
	c.mustCtl(0, c.withDirs("check", "ctlnet", live.Path, "--container-id", "live-1")...)
	live.MustRun(t, "ping", "-c1", "-W2", "10.77.0.1")
	if links := ipJSON[[]ipLink](t, stale, "link", "show", "type", "veth"); len(links) != 0 {
		t.Fatalf("gc left stale-1's interface: %+v", links)
	}
	if res := reservations(t, ctlPlugin(t, c)); len(res) != 1 || res[0].Owner.ContainerID != "live-1" {
		t.Fatalf("after gc: reservations %+v", res)
	}
	if elems := masqElements(t, c.sb.Node, "ctlnet-masq4"); len(elems) != 1 || !strings.Contains(elems[0], "live-1") {
		t.Fatalf("after gc: masquerade %v", elems)
	}

	c.mustCtl(0, c.withDirs("del", "ctlnet", live.Path, "--container-id", "live-1")...)
	if res := reservations(t, ctlPlugin(t, c)); len(res) != 0 {
		t.Fatalf("after del: reservations %+v", res)
	}
	if ports := bridgePorts(t, c.sb.Node, "ctl0"); len(ports) != 0 {
		t.Fatalf("after del: ports %+v", ports)
	}
	// DEL dropped the cache entry, so a CHECK has no prevResult: pier
	// refuses it, and pierctl shows pier's message and code.
	r := c.mustCtl(1, c.withDirs("check", "ctlnet", live.Path, "--container-id", "live-1")...)
	if !strings.Contains(r.stderr, "prevResult") || !strings.Contains(r.stderr, "CNI error code 7") {
		t.Fatalf("check after del: %s", r.stderr)
	}
	c.mustCtl(2, c.withDirs("add", "ctlnet")...)
	c.mustCtl(1, c.withDirs("add", "nosuchnet", live.Path)...)
}

// ctlPlugin is pier's own config of ctlnet, as a runtime gives it on stdin.
func ctlPlugin(t *testing.T, c *ctlEnv) string {
	return fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "ctlnet", "type": "pier", "bridge": "ctl0",
  "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": { "type": "pier-ipam", "subnet": "10.77.0.0/24", "dataDir": %q, "routes": [ { "dst": "0.0.0.0/0" } ] } }`, c.dataDir)
}

func checkStatus(t *testing.T, c *ctlEnv, used uint64) {
	t.Helper()
	r := c.mustCtl(0, c.withDirs("status", "ctlnet", "-o", "json")...)
	rep := ctlJSON[struct {
		CNIStatus string         `json:"cniStatus"`
		Pool      *leases.Status `json:"pool"`
	}](t, r)
	if rep.CNIStatus != "ok" || rep.Pool == nil || len(rep.Pool.Ranges) != 1 || rep.Pool.Ranges[0].Used != used || rep.Pool.Ranges[0].Size != 253 {
		t.Fatalf("status: %s", r.stdout)
	}
	text := c.mustCtl(0, c.withDirs("status", "ctlnet")...)
	if !strings.Contains(text.stdout, "CNI STATUS: ok") || !strings.Contains(text.stdout, "10.77.0.1-10.77.0.254") {
		t.Fatalf("status text:\n%s", text.stdout)
	}
}

func checkInspectLive(t *testing.T, c *ctlEnv, netnsPath string) {
	t.Helper()
	r := c.mustCtl(0, "inspect", "live-1", "--conf-dir", c.confDir, "--cache-dir", c.cacheDir, "-o", "json")
	atts := ctlJSON[[]inspect.Attachment](t, r)
	if len(atts) != 1 {
		t.Fatalf("inspect live-1: %d attachments", len(atts))
	}
	a := atts[0]
	switch {
	case len(a.Problems) > 0:
		t.Errorf("inspect live-1 problems: %v", a.Problems)
	case a.NetNS != netnsPath || !slices.Contains(a.FoundIn, "libcni cache") || !slices.Contains(a.FoundIn, "host veth alias"):
		t.Errorf("inspect live-1 found %v netns %q", a.FoundIn, a.NetNS)
	case a.Bridge == nil || len(a.Bridge.Gateways) != 1 || a.Bridge.Gateways[0].Value != "10.77.0.1/24":
		t.Errorf("inspect live-1 bridge: %+v", a.Bridge)
	case a.HostVeth == nil || a.Interface == nil || a.HostVeth.PeerIndex != a.Interface.Index || !a.HostVeth.Hairpin:
		t.Errorf("inspect live-1 veth: %+v %+v", a.HostVeth, a.Interface)
	case len(a.Addresses) != 1 || a.Addresses[0].Value != "10.77.0.2/24":
		t.Errorf("inspect live-1 addresses: %+v", a.Addresses)
	case len(a.Routes) != 1 || a.Routes[0].Gw != "10.77.0.1" || !strings.Contains(a.Routes[0].Why, "ipam.routes"):
		t.Errorf("inspect live-1 routes: %+v", a.Routes)
	case len(a.Masquerade) != 1 || len(a.Reservations) != 1:
		t.Errorf("inspect live-1 masquerade %+v reservations %+v", a.Masquerade, a.Reservations)
	case len(a.PortMappings) != 1 || a.PortMappings[0].HostPort != 8080 || !strings.Contains(a.PortMappings[0].Why, "no plugin"):
		t.Errorf("inspect live-1 port mappings: %+v", a.PortMappings)
	}
	for _, why := range []string{a.Bridge.Why, a.HostVeth.Why, a.Interface.Why, a.Masquerade[0].Why, a.Reservations[0].Why} {
		if why == "" {
			t.Errorf("an item of inspect live-1 has no why: %s", r.stdout)
		}
	}
	text := c.mustCtl(0, "inspect", "live-1", "--conf-dir", c.confDir, "--cache-dir", c.cacheDir)
	for _, want := range []string{"host veth", "hairpin on", "masquerade   10.77.0.2", "route        0.0.0.0/0 via 10.77.0.1", "why: "} {
		if !strings.Contains(text.stdout, want) {
			t.Errorf("inspect text lacks %q:\n%s", want, text.stdout)
		}
	}
}

// checkInspectStale finds an attachment no cache knows by its netns (the
// veth peer) and summarizes the network.
func checkInspectStale(t *testing.T, c *ctlEnv, netnsPath string) {
	t.Helper()
	r := c.mustCtl(0, "inspect", "--netns", netnsPath, "--conf-dir", c.confDir, "--cache-dir", c.cacheDir, "-o", "json")
	atts := ctlJSON[[]inspect.Attachment](t, r)
	if len(atts) != 1 || atts[0].ContainerID != "stale-1" || atts[0].Interface == nil || len(atts[0].Problems) > 0 {
		t.Fatalf("inspect --netns: %s", r.stdout)
	}
	s := c.mustCtl(0, "inspect", "--network", "ctlnet", "--conf-dir", c.confDir, "--cache-dir", c.cacheDir, "-o", "json")
	sum := ctlJSON[inspect.Network](t, s)
	if len(sum.Attachments) != 2 || sum.Pool == nil || sum.Pool.Ranges[0].Used != 2 || sum.Rules == nil || sum.Rules.Elements != 2 {
		t.Fatalf("inspect --network: %s", s.stdout)
	}
	for _, m := range sum.Attachments {
		if !strings.HasPrefix(m.State, "complete") || m.Cached != (m.ContainerID == "live-1") {
			t.Errorf("inspect --network member %+v", m)
		}
	}
	c.mustCtl(1, "inspect", "nosuch", "--conf-dir", c.confDir, "--cache-dir", c.cacheDir)
}
