package e2e

// Network policy measurements (PIER_MEASURE=1, reported, never asserted),
// for docs/networkpolicy.md: the plugin's ADD with policy enforcement off,
// on with no policy and on with 500 policies in the cluster; iperf3
// between two allowed pods, on one node and across nodes, without
// enforcement, with none and with 500 policies; the time from a policy's
// creation to its enforcement on both nodes; the engine's cost per event;
// nftables objects per policy and per pod.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/pier-cni/pier/internal/netpol/netpoltest"
	"github.com/pier-cni/pier/internal/testnet"
)

const benchPolicies = 500

// benchPolicy is policy i of the 500: it selects app=svc-i of namespace
// bench and admits app=client-(i%50) of namespaces team=t-(i%10) on one
// TCP port; every 7th also a named port, every 10th also an ipBlock with
// an except, every 5th also holds egress to namespaces team=t-(i%10).
func benchPolicy(i int) *networkingv1.NetworkPolicy {
	p := netpoltest.In(netpoltest.Policy("bench", fmt.Sprintf("p%03d", i), netpoltest.Sel("app", fmt.Sprintf("svc-%d", i))),
		netpoltest.Peers(netpoltest.BothPeer(netpoltest.Sel("team", fmt.Sprintf("t-%d", i%10)), netpoltest.Sel("app", fmt.Sprintf("client-%d", i%50)))),
		netpoltest.Port(corev1.ProtocolTCP, 8000+i%100))
	if i%7 == 0 {
		p = netpoltest.In(p, netpoltest.Peers(), netpoltest.Named(corev1.ProtocolTCP, "metrics"))
	}
	if i%10 == 0 {
		p = netpoltest.In(p, netpoltest.Peers(netpoltest.CIDRPeer(netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("198.51.100.128/25"))))
	}
	if i%5 == 0 {
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		p = netpoltest.Out(p, netpoltest.Peers(netpoltest.NSPeer(netpoltest.Sel("team", fmt.Sprintf("t-%d", i%10)))))
	}
	return p
}

// benchCluster fills both engines with the namespaces and 1,000 pods of
// other nodes (in the selector sets, routed nowhere).
func benchCluster(t *testing.T, c *npCluster) {
	for i := range 10 {
		c.must(c.Apply(netpoltest.NamespaceObject(fmt.Sprintf("t-%d", i), map[string]string{"team": fmt.Sprintf("t-%d", i)})))
	}
	c.must(c.Apply(netpoltest.NamespaceObject("bench", map[string]string{"team": "bench"})))
	for j := range 1000 {
		addr := netip.AddrFrom4([4]byte{10, 245, byte(j / 250), byte(1 + j%250)})
		p := netpoltest.PodObject(fmt.Sprintf("t-%d/remote-%d", j%10, j), fmt.Sprintf("node-r%d", j%20), addr,
			map[string]string{"app": fmt.Sprintf("client-%d", j%50)})
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9090})
		c.must(c.Apply(p))
	}
}

func (c *npCluster) cniWith(n *npNode, verb string, p *npPod, conf string) testnet.PluginRun {
	ns, name, _ := strings.Cut(p.name, "/")
	env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + strings.ReplaceAll(p.name, "/", "-"),
		"CNI_NETNS=" + p.ns.Path, "CNI_IFNAME=eth0", "CNI_PATH=" + c.bin,
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name}
	cmd, err := n.sb.Start(filepath.Join(c.bin, "pier"), env, []byte(conf))
	if err != nil {
		return testnet.PluginRun{ExitCode: -1, Stderr: err.Error()}
	}
	return testnet.Outcome(cmd, cmd.Wait())
}

// latencyVariant is one kind of ADD in an interleaved latency round.
type latencyVariant struct {
	name string
	node *npNode
	conf string
	adds []time.Duration
	dels []time.Duration
}

// addLatency times the ADDs of 30 pods of namespace bench per variant,
// the variants taking turns so that the machine's drift hits them alike.
// Each pod is told to the engines before its ADD, as the watch does
// (labelled app=svc-k, so that policy k selects it where the policies
// are). The DELs come after all ADDs, not in between: a transaction that
// deletes leaves the kernel a deferred release that the next socket to
// close waits for, whoever it belongs to, and the following ADD would
// pay it.
func (c *npCluster) addLatency(t *testing.T, variants []*latencyVariant) {
	type made struct {
		v *latencyVariant
		p *npPod
	}
	var pods []made
	for k := range 31 {
		for _, v := range variants {
			name := fmt.Sprintf("bench/%s-%d", v.name, k)
			p := &npPod{name: name, node: v.node, ns: v.node.sb.Container()}
			c.must(c.Apply(netpoltest.PodObject(name, v.node.name, netip.Addr{}, map[string]string{"app": fmt.Sprintf("svc-%d", k)})))
			// The engines run in this process: collect its garbage now
			// rather than during the plugin's run on the 2 shared cores.
			runtime.GC()
			start := time.Now()
			if r := c.cniWith(v.node, "ADD", p, v.conf); r.ExitCode != 0 {
				t.Fatalf("ADD %s: %s %s", name, r.Stdout, r.Stderr)
			}
			if k > 0 { // the first warms the bridge and the tables up
				v.adds = append(v.adds, time.Since(start))
			}
			pods = append(pods, made{v, p})
		}
	}
	for _, m := range pods {
		start := time.Now()
		if r := c.cniWith(m.v.node, "DEL", m.p, m.v.conf); r.ExitCode != 0 {
			t.Fatalf("DEL %s: %s %s", m.p.name, r.Stdout, r.Stderr)
		}
		m.v.dels = append(m.v.dels, time.Since(start))
	}
	for _, m := range pods {
		ns, pod, _ := strings.Cut(m.p.name, "/")
		for _, node := range c.nodes {
			c.must(node.engine.DeletePod(ns, pod))
		}
		m.p.ns.Delete(t)
	}
}

// masqConf is a node's policy network config with ipMasq, so that every
// latency variant makes its one nftables transaction and the figures
// compare its content; policy says whether networkPolicy is on.
func masqConf(n *npNode, policy bool) string {
	conf := strings.Replace(npConf(n), `"isGateway": true,`, `"isGateway": true, "ipMasq": true,`, 1)
	if !policy {
		conf = strings.Replace(conf, `"networkPolicy": true`, `"networkPolicy": false`, 1)
	}
	return conf
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// nftCounts counts the objects of table inet pier in a node.
type nftCounts struct{ chains, rules, sets, elements int }

func (c nftCounts) String() string {
	return fmt.Sprintf("%d chains, %d rules, %d sets/maps, %d elements", c.chains, c.rules, c.sets, c.elements)
}

func (n *npNode) counts(t *testing.T) nftCounts {
	out := n.sb.Node.MustRun(t, "nft", "-j", "list", "table", "inet", "pier")
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	var c nftCounts
	for _, o := range doc.Nftables {
		switch {
		case o["chain"] != nil:
			c.chains++
		case o["rule"] != nil:
			c.rules++
		case o["set"] != nil, o["map"] != nil:
			c.sets++
			var s struct {
				Elem []json.RawMessage `json:"elem"`
			}
			raw := o["set"]
			if raw == nil {
				raw = o["map"]
			}
			_ = json.Unmarshal(raw, &s) // a set without elements has no "elem"
			c.elements += len(s.Elem)
		}
	}
	return c
}

func TestNetworkPolicyMeasure(t *testing.T) {
	if os.Getenv("PIER_MEASURE") == "" {
		t.Skip("measurements: set PIER_MEASURE=1")
	}
	c := newNPNodes(t)
	node1, node2 := c.nodes[0], c.nodes[1]
	report := func(format string, a ...any) { fmt.Printf("netpol measure: "+format+"\n", a...) }

	srv, cli, remote := c.iperfPods(t)
	benchCluster(t, c)
	for _, n := range c.nodes {
		c.must(n.engine.Start())
	}
	base := node1.counts(t)
	c.reattach(t, srv, cli, remote)

	// One node holds the 500 policies, the other none, and ADDs on both
	// take turns; then the nodes swap roles, so that neither the drift of
	// this shared machine nor a difference between the nodes favours one.
	start := time.Now()
	for i := range benchPolicies {
		c.must(node2.engine.SetPolicy(benchPolicy(i)))
	}
	report("%d policies applied one by one on a node in %s (%s per policy)", benchPolicies, time.Since(start).Round(time.Millisecond),
		(time.Since(start) / benchPolicies).Round(time.Microsecond))
	first := []*latencyVariant{
		{name: "off", node: node1, conf: masqConf(node1, false)},
		{name: "on0", node: node1, conf: masqConf(node1, true)},
		{name: "on500", node: node2, conf: masqConf(node2, true)},
	}
	c.addLatency(t, first)
	for i := range benchPolicies {
		c.must(node1.engine.SetPolicy(benchPolicy(i)))
		c.must(node2.engine.DeletePolicy("bench", benchPolicy(i).Name))
	}
	second := []*latencyVariant{
		{name: "off2", node: node2, conf: masqConf(node2, false)},
		{name: "on0-2", node: node2, conf: masqConf(node2, true)},
		{name: "on500-2", node: node1, conf: masqConf(node1, true)},
	}
	c.addLatency(t, second)
	for i, v := range first {
		v.adds, v.dels = append(v.adds, second[i].adds...), append(v.dels, second[i].dels...)
	}
	off, on0, on500 := first[0], first[1], first[2]
	report("ADD (ipMasq on, median of 60, interleaved, nodes swapped halfway): networkPolicy off %s, on with no policy %s (%.2fx), on with %d policies %s (%.2fx of no policy; halves %.2fx and %.2fx)",
		median(off.adds), median(on0.adds), ratio(on0.adds, off.adds), benchPolicies, median(on500.adds), ratio(on500.adds, on0.adds),
		ratio(on500.adds[:30], on0.adds[:30]), ratio(second[2].adds, second[1].adds))
	report("DEL (same): off %s, on with no policy %s, on with %d policies %s", median(off.dels), median(on0.dels), benchPolicies, median(on500.dels))

	for i := range benchPolicies {
		c.must(node2.engine.SetPolicy(benchPolicy(i)))
	}
	full := node1.counts(t)
	c.iperfRounds(t, report, srv, cli, remote)
	c.measureEnforce(t, report)
	c.measureObjects(t, report, base, full)
}

func ratio(a, b []time.Duration) float64 { return float64(median(a)) / float64(median(b)) }

// measureEnforce times policy creation → both nodes' tables updated (the
// engines run side by side, as two nodes do), and the engine's cost of a
// pod relabel and of a new remote pod, with 500 policies and 1,000 pods.
func (c *npCluster) measureEnforce(t *testing.T, report func(string, ...any)) {
	var create, relabel, podAdd []time.Duration
	for i := range 21 {
		np := benchPolicy(benchPolicies + i)
		start := time.Now()
		var wg sync.WaitGroup
		for _, n := range c.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.must(n.engine.SetPolicy(np))
			}()
		}
		wg.Wait()
		create = append(create, time.Since(start))
		p := netpoltest.PodObject(fmt.Sprintf("t-1/remote-%d", 1+10*i), "node-r1", netip.AddrFrom4([4]byte{10, 245, 0, byte(2 + 10*i)}),
			map[string]string{"app": fmt.Sprintf("client-%d", i)})
		start = time.Now()
		c.must(c.nodes[0].engine.SetPod(p))
		relabel = append(relabel, time.Since(start))
		start = time.Now()
		c.must(c.nodes[0].engine.SetPod(netpoltest.PodObject(fmt.Sprintf("t-2/new-%d", i), "node-r2",
			netip.AddrFrom4([4]byte{10, 246, 0, byte(1 + i)}), map[string]string{"app": fmt.Sprintf("client-%d", i)})))
		podAdd = append(podAdd, time.Since(start))
	}
	report("policy created -> enforced on both nodes (engine + nftables, no API server): median %s, max %s", median(create), slices.Max(create))
	report("engine, one node: pod relabel %s, new remote pod %s (median, %d policies, 1,000+ pods)", median(relabel), median(podAdd), benchPolicies)
}

// measureObjects reports nftables objects per policy and per pod.
func (c *npCluster) measureObjects(t *testing.T, report func(string, ...any), base, full nftCounts) {
	n := c.nodes[0]
	report("table inet pier on node1 with no policy (1,000 remote pods): %s", base)
	report("with %d policies: %s; per policy %.1f chains, %.1f rules, %.2f sets, %.1f elements", benchPolicies, full,
		float64(full.chains-base.chains)/benchPolicies, float64(full.rules-base.rules)/benchPolicies,
		float64(full.sets-base.sets)/benchPolicies, float64(full.elements-base.elements)/benchPolicies)
	before := n.counts(t)
	var pods []*npPod
	for k := range 10 {
		name := fmt.Sprintf("bench/count-%d", k)
		p := &npPod{name: name, node: n, ns: n.sb.Container()}
		c.must(c.Apply(netpoltest.PodObject(name, n.name, netip.Addr{}, map[string]string{"app": fmt.Sprintf("svc-%d", k)})))
		if r := c.cniWith(n, "ADD", p, npConf(n)); r.ExitCode != 0 {
			t.Fatalf("ADD: %s", r.Stdout)
		}
		pods = append(pods, p)
	}
	after := n.counts(t)
	report("per local pod (selected by one policy): %.1f chains, %.1f rules, %.1f elements (its map elements and set memberships)",
		float64(after.chains-before.chains)/10, float64(after.rules-before.rules)/10, float64(after.elements-before.elements)/10)
	for _, p := range pods {
		c.cniWith(n, "DEL", p, npConf(n))
	}
}

// iperfRounds compares throughput between allowed pods with the policy
// data plane out of the path (its hooked chains deleted) and in it (500
// policies, restored by a resync), in alternating rounds: this machine is
// shared, and one run of iperf3 varies by 2x.
func (c *npCluster) iperfRounds(t *testing.T, report func(string, ...any), srv, cli, remote *npPod) {
	var sameOff, sameOn, crossOff, crossOn []float64
	for range 5 {
		for _, n := range c.nodes {
			for _, ch := range []string{"np-forward-egress", "np-forward-ingress", "np-input-egress"} {
				n.sb.Node.MustRun(t, "nft", "delete", "chain", "inet", "pier", ch)
			}
		}
		sameOff, crossOff = append(sameOff, iperf3Once(t, cli, srv)), append(crossOff, iperf3Once(t, remote, srv))
		for _, n := range c.nodes {
			c.must(n.engine.Resync())
		}
		sameOn, crossOn = append(sameOn, iperf3Once(t, cli, srv)), append(crossOn, iperf3Once(t, remote, srv))
	}
	med := func(v []float64) string {
		s := slices.Clone(v)
		slices.Sort(s)
		return fmt.Sprintf("%.1f (%.1f-%.1f)", s[len(s)/2], s[0], s[len(s)-1])
	}
	report("iperf3 Gbit/s, median (range) of 5 alternating rounds: same node without the policy chains %s, with %d policies %s; across nodes without %s, with %s",
		med(sameOff), benchPolicies, med(sameOn), med(crossOff), med(crossOn))
}

// iperfPods attaches an iperf3 server pod on node1 (bench/svc-0) and
// clients on node1 and node2 (t-0/client-0, which policy 0 admits) with
// networkPolicy off, and starts the server.
func (c *npCluster) iperfPods(t *testing.T) (srv, cli, remote *npPod) {
	mk := func(name string, n *npNode) *npPod {
		p := &npPod{name: name, node: n, ns: n.sb.Container()}
		off := strings.Replace(npConf(n), `"networkPolicy": true`, `"networkPolicy": false`, 1)
		r := c.cniWith(n, "ADD", p, off)
		var res struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		}
		if r.ExitCode != 0 || json.Unmarshal([]byte(r.Stdout), &res) != nil || len(res.IPs) == 0 {
			t.Fatalf("ADD %s: %s %s", name, r.Stdout, r.Stderr)
		}
		p.addr = netip.MustParsePrefix(res.IPs[0].Address).Addr()
		return p
	}
	srv, cli, remote = mk("bench/iperf-srv", c.nodes[0]), mk("t-0/iperf-cli", c.nodes[0]), mk("t-0/iperf-remote", c.nodes[1])
	cmd := exec.Command("iperf3", "-s", "-p", "8000")
	if err := testnet.StartIn(srv.ns.Path, cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killWait(cmd) })
	return srv, cli, remote
}

// reattach re-attaches the iperf pods with networkPolicy on, the engines
// knowing them (the server is selected by policy 0, which admits the
// clients on TCP 8000), and reports their addresses.
func (c *npCluster) reattach(t *testing.T, pods ...*npPod) {
	labels := map[string]map[string]string{"bench/iperf-srv": {"app": "svc-0"}, "t-0/iperf-cli": {"app": "client-0"}, "t-0/iperf-remote": {"app": "client-0"}}
	for _, p := range pods {
		off := strings.Replace(npConf(p.node), `"networkPolicy": true`, `"networkPolicy": false`, 1)
		c.cniWith(p.node, "DEL", p, off)
		c.must(c.Apply(netpoltest.PodObject(p.name, p.node.name, netip.Addr{}, labels[p.name])))
		r := c.cniWith(p.node, "ADD", p, npConf(p.node))
		if r.ExitCode != 0 {
			t.Fatalf("ADD %s: %s %s", p.name, r.Stdout, r.Stderr)
		}
		var res current.Result
		c.must(json.Unmarshal([]byte(r.Stdout), &res))
		a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
		p.addr = a.Unmap()
		c.must(c.Apply(netpoltest.PodObject(p.name, p.node.name, p.addr, labels[p.name])))
	}
}

// iperf3Once is a 3 s TCP test from a client pod to the server pod's port
// 8000, in Gbit/s.
func iperf3Once(t *testing.T, from, to *npPod) float64 {
	var last string
	for range 20 {
		out, err := from.ns.Run("iperf3", "-c", to.addr.String(), "-p", "8000", "-t", "3", "-J")
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err == nil && json.Unmarshal([]byte(out), &r) == nil && r.End.SumReceived.BitsPerSecond > 0 {
			return r.End.SumReceived.BitsPerSecond / 1e9
		}
		last = out
		time.Sleep(100 * time.Millisecond) // the server takes one client at a time
	}
	t.Fatalf("iperf3 %s -> %s: %s", from.name, to.name, last)
	return 0
}
