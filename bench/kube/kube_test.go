// Package kubebench measures pierd's Kubernetes mode side by side with
// flannel (the anchor: flanneld FlannelVersion with its kube subnet
// manager, its CNI plugin's delegate being the reference bridge +
// host-local), in one run, in one sandbox: the same kube-apiserver
// (internal/kubetest), node namespaces on one underlay, the same
// measurements for both. It reports, never asserts; it runs only with
// PIER_MEASURE=1, as root, and is not part of CI:
//
//	make bench-kube      # or: PIER_MEASURE=1 go test -run TestKubeVsFlannel -v -timeout 30m ./bench/kube/
//
// PIER_BENCH_OUT=docs/benchmarks.md makes it write its tables into that
// file, between its markers. It runs in a mount namespace of its own with
// an empty /run, so it leaves no file outside its temp dirs.
package kubebench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/testnet"
)

const (
	flannelCIDR = "10.245.0.0/16"
	samples     = 30 // ADD/DEL pairs per side, after warmup
	warmup      = 3
)

// result is one side's figures in one routing mode.
type result struct {
	add, del          []time.Duration
	rttCross          float64 // ms
	tputCross         float64 // Gbit/s
	tputSame          float64
	newNode, goneNode time.Duration
	newNodeNote       string
	apiDownRate       float64 // pods/s, ADDs one after another
	rssMiB            float64 // the agent's resident set, idle with its nodes
}

// TestMain runs the measurement in a mount namespace of its own with an
// empty /run (testnet.PrivateRun): what the programs it starts write
// there (flanneld's, pier's node lock had its build not moved it) stays
// out of the machine's /run.
func TestMain(m *testing.M) {
	if os.Getenv("PIER_MEASURE") != "" && os.Geteuid() == 0 {
		if err := testnet.PrivateRun(); err != nil {
			fmt.Fprintln(os.Stderr, "bench/kube:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func TestKubeVsFlannel(t *testing.T) {
	if os.Getenv("PIER_MEASURE") == "" {
		t.Skip("a measurement: set PIER_MEASURE=1 (root; builds flanneld " + FlannelVersion + " once)")
	}
	testnet.RequireRoot(t)
	flanneld := buildFlanneld(t)
	cniPath := flannelCNIPath(t)
	rep := &report{started: time.Now()}
	for _, mode := range []string{"vxlan", "host-gw"} {
		t.Run(mode, func(t *testing.T) {
			p, f := measure(t, mode, flannelSetup{flanneld: flanneld, backend: mode, cniPath: cniPath})
			rep.add(mode, p, f)
		})
	}
	rep.write(t)
}

// side is one contestant on its two nodes, with a pod on each and a
// second pod on the first (same-node traffic).
type side struct {
	name    string
	nodes   []*kubetest.Node
	exec    execFunc // the CNI chain on the first node
	sb      *testnet.Sandbox
	a, b, c kubetest.Pod
}

// measure sets both sides up in one sandbox — Pier on nodes 1 and 2 of
// the cluster CIDR 10.244.0.0/16, flannel on nodes 11 and 12 of
// flannelCIDR, each node with a pod so that bridges are in use, as on a
// working node — and takes every figure of both, interleaving the two
// where they can run at once.
func measure(t *testing.T, mode string, fs flannelSetup) (p, f result) {
	e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: mode})
	pier := setupPier(t, e)
	fl, fnodes := setupFlannel(t, e, fs)
	for _, s := range []*side{pier, fl} {
		kubetest.PingPods(t, []kubetest.Pod{s.a, s.b, s.c})
	}
	addP, addF, delP, delF := interleavedLatencies(t, pier, fl)
	p.add, p.del, f.add, f.del = addP, delP, addF, delF
	p.rttCross, f.rttCross = alternate(3, func() float64 { return rtt(t, pier.a.NS, pier.b.Addrs[0]) },
		func() float64 { return rtt(t, fl.a.NS, fl.b.Addrs[0]) })
	p.tputCross, f.tputCross = alternate(3, func() float64 { return iperf(t, pier.a.NS, pier.b.NS, pier.b.Addrs[0]) },
		func() float64 { return iperf(t, fl.a.NS, fl.b.NS, fl.b.Addrs[0]) })
	p.tputSame, f.tputSame = alternate(3, func() float64 { return iperf(t, pier.a.NS, pier.c.NS, pier.c.Addrs[0]) },
		func() float64 { return iperf(t, fl.a.NS, fl.c.NS, fl.c.Addrs[0]) })
	n3 := e.Join(3, testnet.New(t))
	p.newNode, p.goneNode, p.newNodeNote = nodeTimes(t, e, newNode{observer: pier.nodes[0].SB.Node,
		dst: netip.MustParsePrefix(e.NodeRanges(3)[0]), node: n3, start: n3.Start})
	n13 := e.AddNode(13, flannelRanges(13))
	annotate(t, e, n13.Name)
	f.newNode, f.goneNode, f.newNodeNote = nodeTimes(t, e, newNode{observer: fl.nodes[0].SB.Node,
		dst: netip.MustParsePrefix(flannelRanges(13)[0]), node: n13, start: func() { startFlannel(t, e, n13, fs) }})
	// Last: after the outage the agents' watches resume with client-go's
	// backoff, which would count in the figures above.
	p.apiDownRate, f.apiDownRate = apiDownRates(t, e, pier, fl)
	if mode == "vxlan" {
		p.rssMiB, f.rssMiB = rssAtScale(t, e, pier.nodes[0], fnodes[0])
	} else {
		p.rssMiB, f.rssMiB = rssMiB(t, pier.nodes[0].PID()), rssMiB(t, fnodes[0].cmd.Process.Pid)
	}
	return p, f
}

func flannelRanges(i int) []string { return []string{fmt.Sprintf("10.245.%d.0/24", i)} }

func setupPier(t *testing.T, e *kubetest.Env) *side {
	// The benchmark's cluster holds both agents' pods: Pier's nodes take
	// ranges of 10.244.0.0/16, flannel's of its network 10.245.0.0/16,
	// where rssAtScale's fake Nodes are too, so that both agents route
	// them (pierd routes only ranges inside its cluster CIDRs; the last
	// --cluster-cidr given counts).
	e.Args = append(e.Args, "--cluster-cidr", "10.244.0.0/15")
	n1, n2 := e.AddNode(1, e.NodeRanges(1)), e.AddNode(2, e.NodeRanges(2))
	n1.Start()
	n2.Start()
	n1.WaitConflist()
	n2.WaitConflist()
	s := &side{name: "pier", nodes: []*kubetest.Node{n1, n2}, sb: n1.SB,
		exec: func(verb string, ns *testnet.NS, id string) (testnet.PluginRun, error) {
			cmd, err := n1.SB.Start(filepath.Join(e.Bin, "pier"), cniEnv(verb, ns, id, e.Bin), []byte(n1.Conflist))
			if err != nil {
				return testnet.PluginRun{}, err
			}
			return testnet.Outcome(cmd, cmd.Wait()), nil
		}}
	s.a, s.b, s.c = n1.AddPod("pier-a"), n2.AddPod("pier-b"), n1.AddPod("pier-c")
	return s
}

func setupFlannel(t *testing.T, e *kubetest.Env, fs flannelSetup) (*side, []*flannelNode) {
	n1, n2 := e.AddNode(11, flannelRanges(11)), e.AddNode(12, flannelRanges(12))
	annotate(t, e, n1.Name, n2.Name)
	f1 := startFlannel(t, e, n1, fs)
	f2 := startFlannel(t, e, n2, fs)
	for _, f := range []*flannelNode{f1, f2} {
		kubetest.Poll(t, 60*time.Second, "flanneld's subnet file on "+f.Name, func() bool {
			_, err := os.Stat(filepath.Join(f.dir, "subnet.env"))
			return err == nil
		}, f.logTail)
	}
	s := &side{name: "flannel", nodes: []*kubetest.Node{n1, n2}, sb: n1.SB, exec: f1.exec}
	s.a, s.b, s.c = flannelPod(t, f1, "fl-a"), flannelPod(t, f2, "fl-b"), flannelPod(t, f1, "fl-c")
	return s, []*flannelNode{f1, f2}
}

// alternate runs p and f rounds times each, alternately, and returns
// their medians: the machine's drift hits both alike.
func alternate(rounds int, p, f func() float64) (float64, float64) {
	var ps, fs []float64
	for range rounds {
		ps, fs = append(ps, p()), append(fs, f())
	}
	slices.Sort(ps)
	slices.Sort(fs)
	return ps[len(ps)/2], fs[len(fs)/2]
}

// interleavedLatencies times whole-process ADD and DEL of both sides in
// turns (warmup first), each in a fresh container namespace made before
// the clock starts.
func interleavedLatencies(t *testing.T, p, f *side) (addP, addF, delP, delF []time.Duration) {
	t.Helper()
	for i := range warmup + samples {
		var adds, dels [2]time.Duration
		for j, s := range []*side{p, f} {
			adds[j], dels[j] = addDel(t, s, fmt.Sprintf("lat-%d", i))
		}
		if i >= warmup {
			addP, addF = append(addP, adds[0]), append(addF, adds[1])
			delP, delF = append(delP, dels[0]), append(delF, dels[1])
		}
	}
	return addP, addF, delP, delF
}

func addDel(t *testing.T, s *side, id string) (add, del time.Duration) {
	t.Helper()
	ns := s.sb.Container()
	defer ns.Delete(t)
	for _, verb := range []string{"ADD", "DEL"} {
		start := time.Now()
		r, err := s.exec(verb, ns, id)
		took := time.Since(start)
		if err == nil {
			err = addOK(r)
		}
		if err != nil {
			t.Fatalf("%s %s %s: %v", s.name, verb, id, err)
		}
		if verb == "ADD" {
			add = took
		} else {
			del = took
		}
	}
	return add, del
}

// apiDownRates kills the API server and starts 20 pods on each side, in
// turns, one after another; it returns each side's pods per second.
func apiDownRates(t *testing.T, e *kubetest.Env, p, f *side) (float64, float64) {
	t.Helper()
	e.API.StopAPIServer()
	defer e.API.Restart(t)
	const n = 20
	var took [2]time.Duration
	for i := range n {
		for j, s := range []*side{p, f} {
			ns := s.sb.Container()
			start := time.Now()
			r, err := s.exec("ADD", ns, fmt.Sprintf("down-%d", i))
			took[j] += time.Since(start)
			if err == nil {
				err = addOK(r)
			}
			if err != nil {
				t.Fatalf("%s ADD with the API server down: %v", s.name, err)
			}
		}
	}
	return n / took[0].Seconds(), n / took[1].Seconds()
}

func cniEnv(verb string, ns *testnet.NS, id, path string) []string {
	netnsPath := ""
	if ns != nil {
		netnsPath = ns.Path
	}
	return []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netnsPath, "CNI_IFNAME=eth0", "CNI_PATH=" + path}
}

func addOK(r testnet.PluginRun) error {
	if r.ExitCode != 0 {
		return fmt.Errorf("exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	return nil
}

type execFunc func(verb string, ns *testnet.NS, id string) (testnet.PluginRun, error)

// flannelPod attaches a container through flannel's chain.
func flannelPod(t *testing.T, f *flannelNode, id string) kubetest.Pod {
	t.Helper()
	ns := f.SB.Container()
	r, err := f.exec("ADD", ns, id)
	if err == nil {
		err = addOK(r)
	}
	if err != nil {
		t.Fatalf("flannel ADD %s: %v\n%s", id, err, f.logTail())
	}
	out := ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	f4 := strings.Fields(out)
	for i, w := range f4 {
		if w == "inet" && i+1 < len(f4) {
			p := netip.MustParsePrefix(f4[i+1])
			return kubetest.Pod{Node: f.Node, NS: ns, ID: id, Addrs: []netip.Addr{p.Addr()}}
		}
	}
	t.Fatalf("flannel pod %s has no IPv4 address:\n%s", id, out)
	return kubetest.Pod{}
}

// rtt is the mean of 20 pings (ms).
func rtt(t *testing.T, from *testnet.NS, to netip.Addr) float64 {
	t.Helper()
	out := from.MustRun(t, "ping", "-c", "20", "-i", "0.05", "-q", to.String())
	i := strings.Index(out, " = ")
	if i < 0 {
		t.Fatalf("ping: %s", out)
	}
	var min, avg float64
	if _, err := fmt.Sscanf(strings.ReplaceAll(out[i+3:], "/", " "), "%f %f", &min, &avg); err != nil {
		t.Fatalf("ping: %v: %s", err, out)
	}
	return avg
}

// watchRoutes reports when a route to dst comes and goes in ns, from the
// kernel's own notifications.
func watchRoutes(t *testing.T, ns *testnet.NS, dst netip.Prefix) (added, removed <-chan time.Time) {
	t.Helper()
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	a, r := make(chan time.Time, 1), make(chan time.Time, 1)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(done) }); h.Close() })
	go func() {
		for u := range ch {
			if u.Dst == nil || u.Dst.String() != dst.String() {
				continue
			}
			now := time.Now()
			switch u.Type {
			case 24: // RTM_NEWROUTE
				select {
				case a <- now:
				default:
				}
			case 25: // RTM_DELROUTE
				select {
				case r <- now:
				default:
				}
			}
		}
	}()
	return a, r
}

// nodeTimes: start (the new node's agent) → its range routed on the
// observer; Node deleted → the route gone. A route already there when
// the agent starts (host-gw routes a Node from its object alone) counts
// from the Node's creation instead, as the note says.
// newNode is a node whose routing nodeTimes times: its range dst, seen
// from observer's node namespace, and start, which starts its agent.
type newNode struct {
	observer *testnet.NS
	dst      netip.Prefix
	node     *kubetest.Node
	start    func()
}

func nodeTimes(t *testing.T, e *kubetest.Env, nn newNode) (time.Duration, time.Duration, string) {
	t.Helper()
	observer, dst, n, start := nn.observer, nn.dst, nn.node, nn.start
	added, removed := watchRoutes(t, observer, dst)
	created := time.Now()
	if !slices.Contains(nodeNames(t, e), n.Name) {
		e.CreateNode(n.Name, []string{dst.String()}, n.IP)
	}
	var routed time.Duration
	note := "from its agent's start"
	began := time.Now()
	start()
	select {
	case at := <-added:
		routed = at.Sub(began)
		if routed < 0 {
			routed, note = at.Sub(created), "from its Node's creation (routed before its agent started)"
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s never routed on the observer", dst)
	}
	del := time.Now()
	if err := e.API.Client.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var gone time.Duration
	select {
	case at := <-removed:
		gone = at.Sub(del)
	case <-time.After(60 * time.Second):
		t.Logf("%s still routed 60 s after its Node was deleted", dst)
		gone = -1
	}
	return routed, gone, note
}

func nodeNames(t *testing.T, e *kubetest.Env) []string {
	l, err := e.API.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range l.Items {
		out = append(out, n.Name)
	}
	return out
}

// rssMiB reads a process's resident set (VmRSS).
func rssMiB(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var rss float64
	var parts []string
	for _, line := range strings.Split(string(b), "\n") {
		for _, key := range []string{"VmRSS:", "RssAnon:", "RssFile:", "VmHWM:"} {
			if v, ok := strings.CutPrefix(line, key); ok {
				var kb float64
				fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
				parts = append(parts, fmt.Sprintf("%s %.1f MiB", key, kb/1024))
				if key == "VmRSS:" {
					rss = kb / 1024
				}
			}
		}
	}
	if rss > 0 {
		t.Logf("MEASURE pid %d: %s", pid, strings.Join(parts, ", "))
		return rss
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

// annotate gives Nodes an annotation, as kubelet's registration always
// does: flanneld v0.28.10 panics ("assignment to entry in nil map", in the
// kube subnet manager's AcquireLease) on its own Node when it has none.
func annotate(t *testing.T, e *kubetest.Env, names ...string) {
	t.Helper()
	for _, name := range names {
		_, err := e.API.Client.CoreV1().Nodes().Patch(context.Background(), name, types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"pier-bench":"flannel"}}}`), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
}
