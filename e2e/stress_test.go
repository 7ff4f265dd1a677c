package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/testnet"
)

const (
	stressRounds     = 3
	stressContainers = 100
)

// stressConf is the classic config on a network of its own: a /16, its own
// name, bridge and masquerade map.
func stressConf(dataDir string) string {
	return fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "stress", "type": "pier",
  "bridge": "pier-stress", "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": { "type": "pier-ipam", "subnet": "10.16.0.0/16", "dataDir": %q,
            "routes": [ { "dst": "0.0.0.0/0" } ] } }`, dataDir)
}

// TestStress starts 100 ADDs at once, then 100 DELs at once, three times
// over on one node. Every call must succeed, no address may be handed out
// twice, and after each burst the store, the kernel (bridge ports, node
// veths) and the masquerade map must agree exactly. Burst wall times are
// logged, never asserted.
func TestStress(t *testing.T) {
	began := time.Now()
	n := newNode(t)
	conf := stressConf(n.dataDir)
	for round := range stressRounds {
		if !stressRound(t, n, conf, round) {
			return
		}
	}
	t.Logf("TestStress took %v", time.Since(began).Round(time.Millisecond))
}

// stressRound runs one ADD burst and one DEL burst; it reports whether the
// round passed, so a broken round does not cascade into the next.
func stressRound(t *testing.T, n *node, conf string, round int) bool {
	ctrs := make([]attachment, stressContainers)
	for i := range ctrs {
		ctrs[i] = n.container(fmt.Sprintf("stress-%d-%03d", round, i))
	}
	defer func() {
		for _, c := range ctrs {
			c.ns.Delete(t)
		}
	}()

	addrs := make([]netip.Addr, len(ctrs))
	took := stressBurst(func(i int) {
		r := stressCall(t, n, "ADD", ctrs[i], conf)
		if r.ExitCode != 0 {
			t.Errorf("round %d: ADD %s: exit %d\nstdout: %s\nstderr: %s", round, ctrs[i].id, r.ExitCode, r.Stdout, r.Stderr)
			return
		}
		addrs[i] = stressResultAddr(t, r.Stdout)
	})
	t.Logf("round %d: %d ADDs at once took %v", round, len(ctrs), took.Round(time.Millisecond))
	if t.Failed() {
		return false
	}
	stressAssertAdded(t, n, conf, ctrs, addrs)

	took = stressBurst(func(i int) {
		if r := stressCall(t, n, "DEL", ctrs[i], conf); r.ExitCode != 0 || r.Stdout != "" {
			t.Errorf("round %d: DEL %s: exit %d\nstdout: %s\nstderr: %s", round, ctrs[i].id, r.ExitCode, r.Stdout, r.Stderr)
		}
	})
	t.Logf("round %d: %d DELs at once took %v", round, len(ctrs), took.Round(time.Millisecond))
	if t.Failed() {
		return false
	}
	stressAssertEmpty(t, n, conf, ctrs)
	return !t.Failed()
}

// stressBurst runs f for every container at once and returns the wall time.
func stressBurst(f func(i int)) time.Duration {
	t0 := time.Now()
	parallel(stressContainers, f)
	return time.Since(t0)
}

// stressCall runs one CNI call in the node namespace, started directly
// (testnet Start) so the burst is of plugin processes, not of `ip`.
func stressCall(t *testing.T, n *node, verb string, a attachment, conf string) testnet.PluginRun {
	cmd, err := n.sb.Start(filepath.Join(n.binDir, "pier"), crashEnv(n, verb, a), []byte(conf))
	if err != nil {
		return testnet.PluginRun{ExitCode: -1, Stderr: err.Error()}
	}
	return testnet.Outcome(cmd, cmd.Wait())
}

func stressResultAddr(t *testing.T, out string) netip.Addr {
	var r current.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.IPs) != 1 {
		t.Errorf("ADD result: %v\n%s", err, out)
		return netip.Addr{}
	}
	a, ok := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	if !ok {
		t.Errorf("ADD result address %v is not IPv4", r.IPs[0].Address)
	}
	return a
}

// stressAssertAdded checks the state after an ADD burst: distinct results,
// each on its container's eth0, and store, bridge ports, node veths and
// masquerade map all naming the same attachments.
func stressAssertAdded(t *testing.T, n *node, conf string, ctrs []attachment, addrs []netip.Addr) {
	t.Helper()
	want := map[string]netip.Addr{}
	holder := map[netip.Addr]string{}
	for i, c := range ctrs {
		if other, dup := holder[addrs[i]]; dup {
			t.Errorf("%s and %s were both given %s", other, c.id, addrs[i])
		}
		holder[addrs[i]] = c.id
		want[c.id] = addrs[i]
		if got := crashEth0Addrs(t, c.ns); !slices.Equal(got, []netip.Addr{addrs[i]}) {
			t.Errorf("%s: eth0 has %v, its ADD result %s", c.id, got, addrs[i])
		}
	}
	if got := reservationMap(t, conf); !maps.Equal(got, want) {
		t.Errorf("store does not match the ADD results: %d reservations, %d results", len(got), len(want))
	}
	var aliases []string
	for _, p := range bridgePorts(t, n.sb.Node, "pier-stress") {
		aliases = append(aliases, p.IfAlias)
	}
	var wantAliases []string
	for _, c := range ctrs {
		wantAliases = append(wantAliases, "pier:stress:"+c.id+":eth0")
	}
	slices.Sort(aliases)
	if !slices.Equal(aliases, wantAliases) {
		t.Errorf("bridge ports do not match the containers: %d ports, %d containers", len(aliases), len(ctrs))
	}
	if v := crashVeths(t, n.sb.Node); len(v) != len(ctrs) {
		t.Errorf("%d veths in the node, want %d", len(v), len(ctrs))
	}
	if got := masqAddrs(t, n.sb.Node, "stress-masq4"); !slices.Equal(got, sortedAddrs(want)) {
		t.Errorf("masquerade map does not match the ADD results: %d elements, %d results", len(got), len(want))
	}
}

// stressAssertEmpty checks the state after a DEL burst: nothing in the
// store, on the bridge, in the node or in the masquerade map, and no eth0
// left in any container.
func stressAssertEmpty(t *testing.T, n *node, conf string, ctrs []attachment) {
	t.Helper()
	if res := reservations(t, conf); len(res) != 0 {
		t.Errorf("after the DELs: %d reservations left, first %+v", len(res), res[0])
	}
	if ports := bridgePorts(t, n.sb.Node, "pier-stress"); len(ports) != 0 {
		t.Errorf("after the DELs: %d bridge ports left", len(ports))
	}
	if v := crashVeths(t, n.sb.Node); len(v) != 0 {
		t.Errorf("after the DELs: veths left in the node: %v", v)
	}
	if e := masqElements(t, n.sb.Node, "stress-masq4"); len(e) != 0 {
		t.Errorf("after the DELs: masquerade elements left: %v", e)
	}
	for _, f := range storeFiles(t, n.dataDir) {
		base := filepath.Base(f)
		if strings.HasPrefix(f, filepath.Join("stress", "owners")+"/") || strings.HasSuffix(base, ".tmp") {
			t.Errorf("after the DELs: store file %s left", f)
		} else if _, err := netip.ParseAddr(base); err == nil {
			t.Errorf("after the DELs: record %s left", f)
		}
	}
	for _, c := range ctrs {
		if links := crashLinks(t, c.ns); len(links) != 1 {
			t.Errorf("after the DELs: %s still has links %v", c.id, links)
			return
		}
	}
}
