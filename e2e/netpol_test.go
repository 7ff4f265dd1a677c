package e2e

// Network policy with the real plugin: two node namespaces joined by an
// underlay namespace (192.0.2.0/24, each node routing the other's pod
// range, as host-gw does), nine pods in container namespaces attached by
// the `pier` binary with "networkPolicy": true and kubelet's CNI_ARGS, an
// echo server in each, and one policy engine per node in the test process
// writing into its node's table inet pier. The engines are fed Go objects
// the way pierd's informers feed them; traffic is real TCP and UDP.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/pier-cni/pier/internal/netpol"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/netpol/explain"
	"github.com/pier-cni/pier/internal/netpol/netpoltest"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

type npCluster struct {
	t        *testing.T
	bin      string
	underlay *testnet.NS
	nodes    [2]*npNode
	pods     map[string]*npPod
	mu       sync.Mutex
	port     int // next probe source port
}

type npNode struct {
	name    string
	ip      string
	cidr    netip.Prefix
	sb      *testnet.Sandbox
	fd      int
	dataDir string
	engine  *netpol.Engine
}

type npPod struct {
	name   string // "ns/pod"
	node   *npNode
	ns     *testnet.NS
	addr   netip.Addr
	result string // the ADD's result
}

func npConf(n *npNode) string {
	return fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "polnet", "type": "pier", "bridge": "pier-np0",
  "isGateway": true, "networkPolicy": true,
  "ipam": { "type": "pier-ipam", "subnet": %q, "dataDir": %q, "routes": [ { "dst": "0.0.0.0/0" } ] } }`, n.cidr, n.dataDir)
}

// newNPCluster builds the two nodes and their engines, tells the engines
// about the namespaces and the pods (scheduled, no address yet, as the
// watch shows them before kubelet starts the sandbox), starts them, then
// attaches each pod with the plugin and reports its address.
func newNPCluster(t *testing.T) *npCluster {
	t.Helper()
	c := newNPNodes(t)
	for _, ns := range netpoltest.NamespaceNames {
		c.must(c.Apply(netpoltest.NamespaceObject(ns, nil)))
	}
	for _, pod := range netpoltest.PodNames {
		c.must(c.Apply(netpoltest.PodOn(pod, netip.Addr{}, nil)))
	}
	for _, n := range c.nodes {
		c.must(n.engine.Start())
	}
	for _, pod := range netpoltest.PodNames {
		p := c.attach(pod, c.nodes[netpoltest.NodeOf(pod)-1])
		c.must(c.Apply(netpoltest.PodOn(pod, p.addr, nil)))
		startEcho(t, p.ns, "tcp/:80,tcp/:81,udp/:80,udp/:81,udp/:53")
	}
	return c
}

// newNPNodes builds the underlay and the two nodes, routing each other's
// pod range, with engines not started and no pod.
func newNPNodes(t *testing.T) *npCluster {
	t.Helper()
	testnet.RequireRoot(t)
	c := &npCluster{t: t, bin: testnet.Binaries(t), underlay: testnet.NewNS(t, "pt-ul-"), pods: map[string]*npPod{}, port: 20000}
	c.underlay.MustRun(t, "ip", "link", "add", "ul", "type", "bridge")
	c.underlay.MustRun(t, "ip", "link", "set", "ul", "up")
	for i := range c.nodes {
		c.nodes[i] = c.addNode(i + 1)
	}
	for i, n := range c.nodes {
		other := c.nodes[1-i]
		n.sb.Node.MustRun(t, "ip", "route", "add", other.cidr.String(), "via", other.ip)
	}
	return c
}

func (c *npCluster) addNode(i int) *npNode {
	t := c.t
	n := &npNode{name: fmt.Sprintf("node%d", i), ip: fmt.Sprintf("192.0.2.%d", i), sb: testnet.New(t), dataDir: t.TempDir(),
		cidr: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))}
	peer := fmt.Sprintf("ul%d", i)
	c.underlay.MustRun(t, "ip", "link", "add", peer, "type", "veth", "peer", "name", "ul0", "netns", n.sb.Node.Name)
	c.underlay.MustRun(t, "ip", "link", "set", peer, "master", "ul", "up")
	n.sb.Node.MustRun(t, "ip", "addr", "add", n.ip+"/24", "dev", "ul0")
	n.sb.Node.MustRun(t, "ip", "link", "set", "ul0", "up")
	f, err := os.Open(n.sb.Node.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	n.fd = int(f.Fd())
	n.engine = netpol.New(netpol.Config{NodeName: n.name, DataPlane: dataplane.New(dataplane.InNetNS(n.fd))})
	return n
}

func (c *npCluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

// attach runs the plugin's ADD for pod on node with kubelet's CNI_ARGS.
func (c *npCluster) attach(pod string, n *npNode) *npPod {
	t := c.t
	t.Helper()
	ns, name, _ := strings.Cut(pod, "/")
	p := &npPod{name: pod, node: n, ns: n.sb.Container()}
	r := c.cni(n, "ADD", p, fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s", ns, name))
	p.addr, p.result = addedAddr(t, pod, r), r.Stdout
	c.pods[pod] = p
	return p
}

// addedAddr fails the test unless r is a successful ADD of pod, and
// returns the first address of its result.
func addedAddr(t *testing.T, pod string, r testnet.PluginRun) netip.Addr {
	t.Helper()
	if r.ExitCode != 0 {
		t.Fatalf("ADD %s: exit %d\n%s\n%s", pod, r.ExitCode, r.Stdout, r.Stderr)
	}
	var res current.Result
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("ADD %s result: %v\n%s", pod, err, r.Stdout)
	}
	a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	return a.Unmap()
}

func (c *npCluster) cni(n *npNode, verb string, p *npPod, args string) testnet.PluginRun {
	env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + strings.ReplaceAll(p.name, "/", "-"),
		"CNI_NETNS=" + p.ns.Path, "CNI_IFNAME=eth0", "CNI_PATH=" + c.bin, "CNI_ARGS=" + args}
	return n.sb.Exec(filepath.Join(c.bin, "pier"), env, []byte(npConf(n)))
}

func (c *npCluster) Addr(pod string) netip.Addr {
	if p, ok := c.pods[pod]; ok {
		return p.addr
	}
	return netip.Addr{}
}

func (c *npCluster) NodeCIDR(node int) netip.Prefix { return c.nodes[node-1].cidr }

// Apply gives an object to both engines, as both nodes' informers see it.
func (c *npCluster) Apply(obj any) error {
	for _, n := range c.nodes {
		var err error
		switch o := obj.(type) {
		case *networkingv1.NetworkPolicy:
			err = n.engine.SetPolicy(o)
		case *corev1.Pod:
			err = n.engine.SetPod(o)
		case *corev1.Namespace:
			err = n.engine.SetNamespace(o)
		default:
			err = fmt.Errorf("cannot apply %T", obj)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}
	return nil
}

func (c *npCluster) DeletePolicy(ns, name string) error {
	for _, n := range c.nodes {
		if err := n.engine.DeletePolicy(ns, name); err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}
	return nil
}

// probeTarget is one cell as the echo prober names it.
type probeTarget struct {
	to    string
	probe netpoltest.Probe
	spec  string
}

// Probe tries every cell, each client pod probing all its targets at once
// (a denied probe waits out its timeout), each probe from a source port
// never used before in the test, so no probe meets the conntrack entry of
// an earlier one. Cells that differ from the expectation are probed once
// more with a longer timeout, so a slow reply on a busy machine is not
// taken for a drop.
func (c *npCluster) Probe(t testing.TB, m *netpoltest.Matrix) *netpoltest.Result {
	res := netpoltest.NewResult(m)
	c.probeCells(t, res, m, func(string, string, netpoltest.Probe) bool { return true }, "1s")
	bad := map[[2]string]map[netpoltest.Probe]bool{}
	for _, x := range res.Mismatches() {
		k := [2]string{x.From, x.To}
		if bad[k] == nil {
			bad[k] = map[netpoltest.Probe]bool{}
		}
		bad[k][x.Probe] = true
	}
	if len(bad) > 0 {
		c.probeCells(t, res, m, func(from, to string, p netpoltest.Probe) bool { return bad[[2]string{from, to}][p] }, "3s")
	}
	return res
}

func (c *npCluster) probeCells(t testing.TB, res *netpoltest.Result, m *netpoltest.Matrix, want func(from, to string, p netpoltest.Probe) bool, timeout string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, from := range m.Pods {
		var targets []probeTarget
		for _, to := range m.Pods {
			for _, p := range m.Probes {
				if from != to && want(from, to, p) {
					targets = append(targets, probeTarget{to, p, fmt.Sprintf("%s/%s:%d", p.Proto, c.pods[to].addr, p.Port)})
				}
			}
		}
		if len(targets) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := c.probeFrom(t, c.pods[from].ns, targets, timeout)
			mu.Lock()
			defer mu.Unlock()
			for i, tg := range targets {
				res.Record(from, tg.to, tg.probe, ok[i])
			}
		}()
	}
	wg.Wait()
}

// probeFrom runs the echo prober in ns and reports which targets answered.
func (c *npCluster) probeFrom(t testing.TB, ns *testnet.NS, targets []probeTarget, timeout string) []bool {
	specs := make([]string, len(targets))
	c.mu.Lock()
	for i, tg := range targets {
		specs[i] = fmt.Sprintf("%s=%d", tg.spec, c.port)
		if c.port++; c.port > 60000 {
			c.port = 20000
		}
	}
	c.mu.Unlock()
	out, err := ns.Run(echoBinary(c.t), "-probe", strings.Join(specs, ","), "-timeout", timeout)
	if err != nil {
		t.Errorf("prober in %s: %v\n%s", ns.Name, err, out)
		return make([]bool, len(targets))
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	ok := make([]bool, len(targets))
	for i := range targets {
		ok[i] = i < len(lines) && strings.HasSuffix(lines[i], " ok")
	}
	return ok
}

// TestNetworkPolicyMatrix runs every scenario of the upstream-style suite
// on one cluster, one after the other: the probe matrices with real
// traffic, same-node (bridged) and cross-node (routed) pairs alike.
func TestNetworkPolicyMatrix(t *testing.T) {
	c := newNPCluster(t)
	for _, sc := range netpoltest.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			c.t = t
			netpoltest.Run(t, c, sc)
		})
	}
}

// probeOne probes one target from ns with a fresh source port.
func (c *npCluster) probeOne(ns *testnet.NS, proto string, addr netip.Addr, port int) bool {
	return c.probeFrom(c.t, ns, []probeTarget{{spec: fmt.Sprintf("%s/%s:%d", proto, addr, port)}}, "1s")[0]
}

func (c *npCluster) expectProbe(from *testnet.NS, what string, addr netip.Addr, want bool) {
	c.t.Helper()
	if got := c.probeOne(from, "tcp", addr, 80); got != want {
		c.t.Errorf("%s: tcp/%s:80 allowed=%v, want %v", what, addr, got, want)
	}
}

// TestNetworkPolicyPodStart: a new pod is held to its policies from its
// first packet. When the engine knows the pod before its ADD (the watch
// sees a scheduled pod before kubelet starts its sandbox), the ADD's
// elements lead straight to its chains; when it does not, its traffic is
// dropped until the engine learns the pod.
func TestNetworkPolicyPodStart(t *testing.T) {
	c := newNPCluster(t)
	node1 := c.nodes[0]
	c.must(c.Apply(netpoltest.Policy("x", "deny-ingress", nil, networkingv1.PolicyTypeIngress)))

	// Known before its ADD: x/d is isolated at once, and may send.
	c.must(c.Apply(netpoltest.PodObject("x/d", node1.name, netip.Addr{}, nil)))
	xd := c.attach("x/d", node1)
	startEcho(t, xd.ns, "tcp/:80")
	c.expectProbe(c.pods["y/a"].ns, "y/a -> x/d right after its ADD (deny-ingress in x)", xd.addr, false)
	c.expectProbe(xd.ns, "x/d -> y/a (x/d's egress is open)", c.pods["y/a"].addr, true)

	// Unknown at its ADD: y/e's traffic is dropped both ways, though no
	// policy selects it, until the engine learns the pod.
	ye := c.attach("y/e", node1)
	startEcho(t, ye.ns, "tcp/:80")
	c.expectProbe(c.pods["y/a"].ns, "y/a -> y/e, y/e not classified", ye.addr, false)
	c.expectProbe(ye.ns, "y/e -> y/a, y/e not classified", c.pods["y/a"].addr, false)
	c.must(c.Apply(netpoltest.PodObject("y/e", node1.name, ye.addr, nil)))
	c.expectProbe(c.pods["y/a"].ns, "y/a -> y/e once classified", ye.addr, true)
	c.expectProbe(ye.ns, "y/e -> y/a once classified", c.pods["y/a"].addr, true)

	// DEL removes the elements; the pod's deletion then removes its chains.
	if r := c.cni(node1, "DEL", ye, "IgnoreUnknown=1;K8S_POD_NAMESPACE=y;K8S_POD_NAME=e"); r.ExitCode != 0 {
		t.Fatalf("DEL y/e: %d %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	els, err := dataplane.ListElements(dataplane.InNetNS(node1.fd))
	c.must(err)
	for _, e := range els {
		if e.Addr == ye.addr {
			t.Errorf("DEL left element %+v", e)
		}
	}
	for _, n := range c.nodes {
		c.must(n.engine.DeletePod("y", "e"))
	}
	if out := node1.sb.Node.MustRun(t, "nft", "list", "table", "inet", "pier"); strings.Contains(out, "np-pod-y/e-") {
		t.Errorf("chains of the deleted pod y/e remain:\n%s", out)
	}
	c.checkAndGC(node1)
}

// checkAndGC: CHECK finds an attachment's policy elements and reports one
// that is missing; GC removes the elements of attachments no longer valid
// and keeps the others'.
func (c *npCluster) checkAndGC(n *npNode) {
	t := c.t
	xa := c.pods["x/a"]
	check := strings.Replace(npConf(n), `"type": "pier",`, `"type": "pier", "prevResult": `+xa.result+`,`, 1)
	run := func(verb, conf string, p *npPod) testnet.PluginRun {
		ns, name, _ := strings.Cut(p.name, "/")
		env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + strings.ReplaceAll(p.name, "/", "-"), "CNI_NETNS=" + p.ns.Path,
			"CNI_IFNAME=eth0", "CNI_PATH=" + c.bin, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name}
		return n.sb.Exec(filepath.Join(c.bin, "pier"), env, []byte(conf))
	}
	if r := run("CHECK", check, xa); r.ExitCode != 0 {
		t.Errorf("CHECK x/a: %s %s", r.Stdout, r.Stderr)
	}
	n.sb.Node.MustRun(t, "nft", "delete", "element", "inet", "pier", "np-ingress4", "{", xa.addr.String(), "}")
	if r := run("CHECK", check, xa); r.ExitCode == 0 || !strings.Contains(r.Stdout, "no ingress element") {
		t.Errorf("CHECK x/a without its ingress element: exit %d %s", r.ExitCode, r.Stdout)
	}
	// GC with every pod of the node valid but x/b.
	var valid []attachment
	for name, p := range c.pods {
		if p.node == n && name != "x/b" {
			valid = append(valid, attachment{id: strings.ReplaceAll(name, "/", "-"), ifName: "eth0"})
		}
	}
	gc := withValidAttachments(npConf(n), valid...)
	if r := run("GC", gc, xa); r.ExitCode != 0 {
		t.Fatalf("GC: %s %s", r.Stdout, r.Stderr)
	}
	els, err := dataplane.ListElements(dataplane.InNetNS(n.fd))
	c.must(err)
	has := func(a netip.Addr) bool {
		return slices.ContainsFunc(els, func(e dataplane.Element) bool { return e.Addr == a })
	}
	if has(c.pods["x/b"].addr) {
		t.Errorf("GC kept the elements of x/b, no longer valid")
	}
	if !has(c.pods["y/c"].addr) || !has(xa.addr) {
		t.Errorf("GC removed elements of valid attachments: %+v", els)
	}
}

// TestNetworkPolicyNodeAndOutside: a node always reaches its own pods,
// ipBlock peers match addresses outside the cluster both ways, and the
// policies see traffic between pods of one node only with br_netfilter,
// which the data plane turns on.
func TestNetworkPolicyNodeAndOutside(t *testing.T) {
	c := newNPCluster(t)
	node1, node2 := c.nodes[0], c.nodes[1]
	outside := c.outsideHost(node1)
	startEcho(t, outside, "tcp/:80")
	outsideAddr := netip.MustParseAddr("198.51.100.2")

	c.must(c.Apply(netpoltest.Policy("x", "deny-all", nil, networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)))
	c.expectProbe(node1.sb.Node, "node1 -> its pod x/a under deny-all", c.pods["x/a"].addr, true)
	c.expectProbe(node1.sb.Node, "node1 -> its pod x/b under deny-all", c.pods["x/b"].addr, true)
	c.expectProbe(node2.sb.Node, "node2 -> x/a, another node's pod, under deny-all", c.pods["x/a"].addr, false)
	c.expectProbe(c.pods["x/a"].ns, "x/a -> outside under deny-all", outsideAddr, false)
	c.must(c.DeletePolicy("x", "deny-all"))

	// Egress to the outside range only.
	c.must(c.Apply(netpoltest.Out(netpoltest.Policy("x", "a-out", netpoltest.Sel("pod", "a"), networkingv1.PolicyTypeEgress),
		netpoltest.Peers(netpoltest.CIDRPeer(netip.MustParsePrefix("198.51.100.0/24"))))))
	c.expectProbe(c.pods["x/a"].ns, "x/a -> outside, allowed by ipBlock", outsideAddr, true)
	c.expectProbe(c.pods["x/a"].ns, "x/a -> y/a, not in the ipBlock", c.pods["y/a"].addr, false)

	// Ingress from the outside range except the outside host, to y/b on
	// the other node, then without the except.
	yb := netpoltest.Sel("pod", "b")
	c.must(c.Apply(netpoltest.In(netpoltest.Policy("y", "b-in", yb, networkingv1.PolicyTypeIngress),
		netpoltest.Peers(netpoltest.CIDRPeer(netip.MustParsePrefix("198.51.100.0/24"), netpoltest.Host32(outsideAddr))))))
	c.expectProbe(outside, "outside -> y/b, excepted", c.pods["y/b"].addr, false)
	c.must(c.Apply(netpoltest.In(netpoltest.Policy("y", "b-in", yb, networkingv1.PolicyTypeIngress),
		netpoltest.Peers(netpoltest.CIDRPeer(netip.MustParsePrefix("198.51.100.0/24"))))))
	c.expectProbe(outside, "outside -> y/b, in the ipBlock", c.pods["y/b"].addr, true)
	c.expectProbe(c.pods["y/a"].ns, "y/a -> y/b, not in the ipBlock", c.pods["y/b"].addr, false)

	// Without br_netfilter, x/b -> x/a (one node, one bridge) never meets
	// the forward hook: the deny is not seen. EnableBridgeNetfilter puts it
	// back.
	c.must(c.Apply(netpoltest.Policy("x", "deny-ingress", nil, networkingv1.PolicyTypeIngress)))
	node1.sb.Node.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
	c.expectProbe(c.pods["x/b"].ns, "x/b -> x/a bridged without br_netfilter", c.pods["x/a"].addr, true)
	c.must(node1.sb.Node.Do(func() error { return dataplane.EnableBridgeNetfilter("/proc/sys") }))
	c.expectProbe(c.pods["x/b"].ns, "x/b -> x/a bridged with br_netfilter", c.pods["x/a"].addr, false)
}

// outsideHost is a namespace behind node n with 198.51.100.2, routing the
// pod ranges back through n; the other node routes it through n too.
func (c *npCluster) outsideHost(n *npNode) *testnet.NS {
	t := c.t
	h := testnet.NewNS(t, "pt-out-")
	n.sb.Node.MustRun(t, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", h.Name)
	n.sb.Node.MustRun(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "uplink0")
	n.sb.Node.MustRun(t, "ip", "link", "set", "uplink0", "up")
	h.MustRun(t, "ip", "addr", "add", "198.51.100.2/24", "dev", "eth0")
	h.MustRun(t, "ip", "link", "set", "eth0", "up")
	h.MustRun(t, "ip", "route", "add", "10.244.0.0/16", "via", "198.51.100.1")
	for _, other := range c.nodes {
		if other != n {
			other.sb.Node.MustRun(t, "ip", "route", "add", "198.51.100.0/24", "via", n.ip)
		}
	}
	return h
}

// explainHarness probes a matrix by asking Explain on the nodes (the
// client's node for egress, the server's for ingress) instead of sending
// traffic: `pierctl policy explain` must agree with the expectations.
type explainHarness struct{ *npCluster }

func (h explainHarness) Probe(t testing.TB, m *netpoltest.Matrix) *netpoltest.Result {
	res := netpoltest.NewResult(m)
	protos := map[string]uint8{"tcp": dataplane.TCP, "udp": dataplane.UDP}
	for _, from := range m.Pods {
		for _, to := range m.Pods {
			if from == to {
				continue
			}
			for _, p := range m.Probes {
				flow := explain.Flow{Src: h.pods[from].addr, Dst: h.pods[to].addr, Proto: protos[p.Proto], Port: uint16(p.Port)}
				allowed := true
				for _, n := range []*npNode{h.pods[from].node, h.pods[to].node} {
					rep, err := explain.Explain(flow, false, dataplane.InNetNS(n.fd))
					if err != nil {
						t.Fatalf("explain %s on %s: %v", flow, n.name, err)
					}
					allowed = allowed && rep.Allowed
				}
				res.Record(from, to, p, allowed)
			}
		}
	}
	return res
}

// TestNetworkPolicyExplainAgrees runs every scenario with Explain as the
// prober: its reading of the installed rules gives the expected matrices.
func TestNetworkPolicyExplainAgrees(t *testing.T) {
	c := newNPCluster(t)
	for _, sc := range netpoltest.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			c.t = t
			netpoltest.Run(t, explainHarness{c}, sc)
		})
	}
}

// TestPierctlPolicy: `pierctl policy pods` and `explain` in a node.
func TestPierctlPolicy(t *testing.T) {
	c := newNPCluster(t)
	node1 := c.nodes[0]
	c.must(c.Apply(netpoltest.In(netpoltest.Policy("x", "a-from-y", netpoltest.Sel("pod", "a")),
		netpoltest.Peers(netpoltest.NSPeer(netpoltest.Sel("ns", "y"))), netpoltest.Port(corev1.ProtocolTCP, 80))))
	pierctl := filepath.Join(c.bin, "pierctl")
	out := node1.sb.Node.MustRun(t, pierctl, "policy", "pods")
	for _, want := range []string{"x/a", "isolated by x/a-from-y", "x/b", "open", c.pods["x/a"].addr.String()} {
		if !strings.Contains(out, want) {
			t.Errorf("policy pods lacks %q:\n%s", want, out)
		}
	}
	ya, xb := c.pods["y/a"].addr.String(), c.pods["x/b"].addr.String()
	out = node1.sb.Node.MustRun(t, pierctl, "policy", "explain", ya, "x/a", "80")
	for _, want := range []string{"ALLOWED on this node", "pier: policy x/a-from-y ingress rule 0", "decided on its own node"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain y/a -> x/a 80 lacks %q:\n%s", want, out)
		}
	}
	out = node1.sb.Node.MustRun(t, pierctl, "policy", "explain", xb, "x/a", "80/udp")
	for _, want := range []string{"DROPPED on this node", "pier: pod x/a is isolated for ingress"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain x/b -> x/a 80/udp lacks %q:\n%s", want, out)
		}
	}
	if out, err := node1.sb.Node.Run(pierctl, "policy", "explain", "x/nope", "x/a", "80"); err == nil || !strings.Contains(out, "unknown here") {
		t.Errorf("explain of an unknown pod: %v\n%s", err, out)
	}
	// inspect of the attachment shows its pod and the policies.
	confDir := t.TempDir()
	c.must(os.WriteFile(filepath.Join(confDir, "10-polnet.conf"), []byte(npConf(node1)), 0o644))
	out = node1.sb.Node.MustRun(t, pierctl, "inspect", "--conf-dir", confDir, "--cache-dir", t.TempDir(), "x-a")
	if !strings.Contains(out, "pod x/a; ingress isolated by x/a-from-y; egress open") {
		t.Errorf("inspect lacks the network policy line:\n%s", out)
	}
	// and the source address check of its port, which turns into a
	// problem once the address is no longer bound.
	port := veth.HostName("x-a", "eth0")
	if want := port + " may send from " + c.pods["x/a"].addr.String(); !strings.Contains(out, want) {
		t.Errorf("inspect lacks %q:\n%s", want, out)
	}
	node1.sb.Node.MustRun(t, "nft", "delete", "element", "bridge", "pier", "ipspoof-allowed4", fmt.Sprintf("{ %q . %s }", port, c.pods["x/a"].addr))
	out, _ = node1.sb.Node.Run(pierctl, "inspect", "--conf-dir", confDir, "--cache-dir", t.TempDir(), "x-a")
	if want := "address " + c.pods["x/a"].addr.String() + " is not bound to port " + port; !strings.Contains(out, want) {
		t.Errorf("inspect with the pair gone lacks %q:\n%s", want, out)
	}
}

// TestNetworkPolicyIPv6: dual-stack pods on one node. Policies hold for
// IPv6 as for IPv4 (selector sets, named ports and ipBlocks of each
// family), and neighbour discovery between pods still works when they are
// isolated.
func TestNetworkPolicyIPv6(t *testing.T) {
	testnet.RequireRoot(t)
	bin := testnet.Binaries(t)
	sb := testnet.New(t)
	f, err := os.Open(sb.Node.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	engine := netpol.New(netpol.Config{NodeName: "node1", DataPlane: dataplane.New(dataplane.InNetNS(int(f.Fd())))})
	conf := fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "polnet6", "type": "pier", "bridge": "pier-np6",
  "isGateway": true, "networkPolicy": true,
  "ipam": { "type": "pier-ipam", "dataDir": %q, "ranges": [ [ { "subnet": "10.244.1.0/24" } ], [ { "subnet": "fd00:10:244:1::/64" } ] ] } }`, t.TempDir())
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{"x", "y"} {
		must(engine.SetNamespace(netpoltest.NamespaceObject(ns, nil)))
	}
	must(engine.Start())
	pods := map[string]*npPod{}
	v6 := map[string]netip.Addr{}
	for _, name := range []string{"x/a", "x/c", "y/b"} {
		ns, pod, _ := strings.Cut(name, "/")
		p := &npPod{name: name, ns: sb.Container()}
		env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + ns + "-" + pod, "CNI_NETNS=" + p.ns.Path, "CNI_IFNAME=eth0",
			"CNI_PATH=" + bin, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + pod}
		r := sb.Exec(filepath.Join(bin, "pier"), env, []byte(conf))
		if r.ExitCode != 0 {
			t.Fatalf("ADD %s: %s %s", name, r.Stdout, r.Stderr)
		}
		var res current.Result
		must(json.Unmarshal([]byte(r.Stdout), &res))
		obj := netpoltest.PodObject(name, "node1", netip.Addr{}, nil)
		for _, ipc := range res.IPs {
			a, _ := netip.AddrFromSlice(ipc.Address.IP)
			a = a.Unmap()
			obj.Status.PodIPs = append(obj.Status.PodIPs, corev1.PodIP{IP: a.String()})
			if a.Is6() {
				v6[name] = a
			} else {
				p.addr = a
			}
		}
		must(engine.SetPod(obj))
		startEcho(t, p.ns, "tcp/:80,tcp/:81,udp/:80")
		pods[name] = p
	}
	c := &npCluster{t: t, port: 20000}
	check := func(from, to string, proto string, port int, want bool) {
		t.Helper()
		got := c.probeFrom(t, pods[from].ns, []probeTarget{{spec: fmt.Sprintf("%s/[%s]:%d", proto, v6[to], port)}}, "1s")[0]
		if got != want {
			t.Errorf("%s -> %s %s/%d over IPv6: allowed=%v, want %v", from, to, proto, port, got, want)
		}
	}
	// x/a may send TCP 80 into the pod range (but to y/b) and nothing else,
	// before it ever talked to anyone: resolving its neighbours over the
	// bridge must pass its egress chain.
	cidr := netip.MustParsePrefix("fd00:10:244:1::/64")
	must(engine.SetPolicy(netpoltest.Out(netpoltest.Policy("x", "a-out", netpoltest.Sel("pod", "a"), networkingv1.PolicyTypeEgress),
		netpoltest.Peers(netpoltest.CIDRPeer(cidr, netpoltest.Host32(v6["y/b"]))), netpoltest.Port(corev1.ProtocolTCP, 80))))
	check("x/a", "x/c", "tcp", 80, true)
	check("x/a", "x/c", "tcp", 81, false)
	check("x/a", "y/b", "tcp", 80, false)
	must(engine.SetPolicy(netpoltest.In(netpoltest.Policy("x", "a-from-y", netpoltest.Sel("pod", "a")),
		netpoltest.Peers(netpoltest.NSPeer(netpoltest.Sel("ns", "y"))), netpoltest.Named(corev1.ProtocolTCP, "serve-80-tcp"))))
	check("y/b", "x/a", "tcp", 80, true)
	check("y/b", "x/a", "tcp", 81, false)
	check("y/b", "x/a", "udp", 80, false)
	check("x/c", "x/a", "tcp", 80, false)
	if got := c.probeFrom(t, pods["x/a"].ns, []probeTarget{{spec: fmt.Sprintf("tcp/%s:80", pods["x/c"].addr)}}, "1s")[0]; got {
		t.Errorf("x/a -> x/c over IPv4 passed an IPv6-only ipBlock")
	}
}

// TestNetworkPolicyAfterFlush: after someone flushes the node's ruleset,
// the plugin's restore (here by GC, as by the next ADD, by CHECK or by
// pierd's watcher) puts the pods' policy elements back from their records,
// leading to np-unclassified while the pods' chains are gone, so the pods
// are cut off rather than open; the engine's resync (pierd's hook after a
// flush) then rebuilds the chains and moves the elements over.
func TestNetworkPolicyAfterFlush(t *testing.T) {
	c := newNPCluster(t)
	node1 := c.nodes[0]
	c.must(c.Apply(netpoltest.Policy("x", "deny-ingress", nil, networkingv1.PolicyTypeIngress)))
	c.expectProbe(c.pods["y/a"].ns, "y/a -> x/a under deny-ingress", c.pods["x/a"].addr, false)

	node1.sb.Node.MustRun(t, "nft", "flush", "ruleset")
	var valid []attachment
	for name, p := range c.pods {
		if p.node == node1 {
			valid = append(valid, attachment{id: strings.ReplaceAll(name, "/", "-"), ifName: "eth0"})
		}
	}
	xa := c.pods["x/a"]
	env := []string{"CNI_COMMAND=GC", "CNI_PATH=" + c.bin}
	if r := node1.sb.Exec(filepath.Join(c.bin, "pier"), env, []byte(withValidAttachments(npConf(node1), valid...))); r.ExitCode != 0 {
		t.Fatalf("GC: %s %s", r.Stdout, r.Stderr)
	}
	els, err := dataplane.ListElements(dataplane.InNetNS(node1.fd))
	c.must(err)
	for _, e := range els {
		if e.Addr == xa.addr && e.Chain != dataplane.ChainUnclassified {
			t.Errorf("restored element %+v, want it to lead to %s (the pod's chains are gone)", e, dataplane.ChainUnclassified)
		}
	}
	if len(els) != 2*len(valid) {
		t.Errorf("%d elements restored, want 2 per attachment of node1 (%d)", len(els), len(valid))
	}
	c.expectProbe(c.pods["y/a"].ns, "y/a -> x/a after the flush and restore", xa.addr, false)
	c.expectProbe(c.pods["x/b"].ns, "x/b -> y/a after the flush and restore (not classified: cut off)", c.pods["y/a"].addr, false)

	c.must(node1.engine.Resync())
	c.expectProbe(c.pods["y/a"].ns, "y/a -> x/a after the resync", xa.addr, false)
	c.expectProbe(c.pods["x/b"].ns, "x/b -> y/a after the resync (egress open)", c.pods["y/a"].addr, true)
	c.expectProbe(c.pods["y/c"].ns, "y/c -> y/a after the resync (no policy)", c.pods["y/a"].addr, true)
}
