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
// file, between its markers.
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
			e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: mode})
			p := measurePier(t, e, mode, mode == "vxlan")
			f := measureFlannel(t, e, mode, flanneld, cniPath)
			rep.add(mode, p, f)
		})
	}
	rep.write(t)
}

// measurePier runs the Pier side: nodes 1 and 2 with their ranges, pierd
// on each; withScale adds 1,000 Node objects for the RSS figure.
func measurePier(t *testing.T, e *kubetest.Env, mode string, withScale bool) result {
	var r result
	n1, n2 := e.AddNode(1, e.NodeRanges(1)), e.AddNode(2, e.NodeRanges(2))
	n1.Start()
	n2.Start()
	n1.WaitConflist()
	n2.WaitConflist()
	r.add, r.del = latencies(t, func(verb string, ns *testnet.NS, id string) (testnet.PluginRun, error) {
		cmd, err := n1.SB.Start(filepath.Join(e.Bin, "pier"), cniEnv(verb, ns, id, e.Bin), []byte(n1.Conflist))
		if err != nil {
			return testnet.PluginRun{}, err
		}
		return testnet.Outcome(cmd, cmd.Wait()), nil
	}, n1.SB)
	a, b, c := n1.AddPod("pier-a"), n2.AddPod("pier-b"), n1.AddPod("pier-c")
	kubetest.PingPods(t, []kubetest.Pod{a, b})
	r.rttCross = rtt(t, a.NS, b.Addrs[0])
	r.tputCross, r.tputSame = iperf(t, a.NS, b.NS, b.Addrs[0]), iperf(t, a.NS, c.NS, c.Addrs[0])

	n3 := e.Join(3, testnet.New(t))
	r.newNode, r.goneNode, r.newNodeNote = nodeTimes(t, e, n1.SB.Node, netip.MustParsePrefix(e.NodeRanges(3)[0]), n3, func() {
		n3.Start()
	})
	if withScale {
		r.rssMiB = pierdRSSAtScale(t, e, n1)
	} else {
		r.rssMiB = rssMiB(t, n1.PID())
	}
	r.apiDownRate = apiDownRate(t, e, func(i int) error {
		return addOK(n1.Exec("ADD", n1.SB.Container(), fmt.Sprintf("down-%d", i)))
	})
	for _, n := range []*kubetest.Node{n1, n2, n3} {
		n.Kill()
		_ = e.API.Client.CoreV1().Nodes().Delete(context.Background(), n.Name, metav1.DeleteOptions{})
	}
	return r
}

// measureFlannel runs the flannel side the same way: nodes 11 and 12 with
// ranges of flannelCIDR, flanneld on each.
func measureFlannel(t *testing.T, e *kubetest.Env, mode, flanneld, cniPath string) result {
	var r result
	backend := mode
	ranges := func(i int) []string { return []string{fmt.Sprintf("10.245.%d.0/24", i)} }
	n1, n2 := e.AddNode(11, ranges(11)), e.AddNode(12, ranges(12))
	annotate(t, e, n1.Name, n2.Name)
	f1 := startFlannel(t, e, n1, flanneld, backend, cniPath)
	f2 := startFlannel(t, e, n2, flanneld, backend, cniPath)
	for _, f := range []*flannelNode{f1, f2} {
		kubetest.Poll(t, 60*time.Second, "flanneld's subnet file on "+f.Name, func() bool {
			_, err := os.Stat(filepath.Join(f.dir, "subnet.env"))
			return err == nil
		}, f.logTail)
	}
	r.add, r.del = latencies(t, f1.exec, f1.SB)
	a, b, c := flannelPod(t, f1, "fl-a"), flannelPod(t, f2, "fl-b"), flannelPod(t, f1, "fl-c")
	kubetest.PingPods(t, []kubetest.Pod{a, b})
	r.rttCross = rtt(t, a.NS, b.Addrs[0])
	r.tputCross, r.tputSame = iperf(t, a.NS, b.NS, b.Addrs[0]), iperf(t, a.NS, c.NS, c.Addrs[0])
	n3 := e.AddNode(13, ranges(13))
	annotate(t, e, n3.Name)
	var f3 *flannelNode
	r.newNode, r.goneNode, r.newNodeNote = nodeTimes(t, e, n1.SB.Node, netip.MustParsePrefix(ranges(13)[0]), n3, func() {
		f3 = startFlannel(t, e, n3, flanneld, backend, cniPath)
	})
	r.rssMiB = rssMiB(t, f1.cmd.Process.Pid)
	r.apiDownRate = apiDownRate(t, e, func(i int) error {
		out, err := f1.exec("ADD", f1.SB.Container(), fmt.Sprintf("down-%d", i))
		if err != nil {
			return err
		}
		return addOK(out)
	})
	for _, f := range []*flannelNode{f1, f2, f3} {
		if f != nil {
			f.stop()
		}
	}
	return r
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

// latencies times whole-process ADD and DEL pairs (warmup first), each in
// a fresh container namespace made before the clock starts.
func latencies(t *testing.T, run execFunc, sb *testnet.Sandbox) (add, del []time.Duration) {
	t.Helper()
	for i := range warmup + samples {
		ns := sb.Container()
		id := fmt.Sprintf("lat-%d", i)
		start := time.Now()
		r, err := run("ADD", ns, id)
		took := time.Since(start)
		if err == nil {
			err = addOK(r)
		}
		if err != nil {
			t.Fatalf("ADD %s: %v", id, err)
		}
		start = time.Now()
		r, err = run("DEL", ns, id)
		tookDel := time.Since(start)
		if err == nil {
			err = addOK(r)
		}
		if err != nil {
			t.Fatalf("DEL %s: %v", id, err)
		}
		if i >= warmup {
			add, del = append(add, took), append(del, tookDel)
		}
		ns.Delete(t)
	}
	return add, del
}

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
func nodeTimes(t *testing.T, e *kubetest.Env, observer *testnet.NS, dst netip.Prefix, n *kubetest.Node, start func()) (time.Duration, time.Duration, string) {
	t.Helper()
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

// apiDownRate kills the API server, starts 20 pods one after another with
// add, and brings the API server back; it returns pods per second.
func apiDownRate(t *testing.T, e *kubetest.Env, add func(i int) error) float64 {
	t.Helper()
	e.API.StopAPIServer()
	defer e.API.Restart(t)
	const n = 20
	start := time.Now()
	for i := range n {
		if err := add(i); err != nil {
			t.Fatalf("ADD with the API server down: %v", err)
		}
	}
	return n / time.Since(start).Seconds()
}

// rssMiB reads a process's resident set (VmRSS).
func rssMiB(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb / 1024
		}
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
