package e2e

// Kubernetes mode (internal/kube) with a real kube-apiserver, through the
// built binaries: the cluster of node namespaces around the API server is
// internal/kubetest's Env (pierd per node with the RBAC of
// deploy/kubernetes/pier-kubernetes.yaml, pods attached by the pier
// binary with the conflist pierd wrote).

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/nodestatus"
)

// TestKubeHostGW and TestKubeVXLAN: three nodes with dual-stack ranges
// from their Node objects, two pods each through the pier binary; every
// pod pings every address of every other; traffic between nodes keeps the
// pod's source address (masquerade exempts the cluster CIDRs); pierctl
// node shows the ranges and where the routes come from; a deleted Node's
// routes go from the others; a Node re-created with other ranges and a
// new node are routed.
func TestKubeHostGW(t *testing.T) { testKubePing(t, "host-gw") }
func TestKubeVXLAN(t *testing.T)  { testKubePing(t, "vxlan") }

func testKubePing(t *testing.T, mode string) {
	e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: mode, Dual: true})
	for i := 1; i <= 3; i++ {
		e.AddNode(i, e.NodeRanges(i)).Start()
	}
	var pods []kubetest.Pod
	for _, n := range e.Nodes {
		n.WaitConflist()
		for j := range 2 {
			pods = append(pods, n.AddPod(fmt.Sprintf("%s-p%d", n.Name, j)))
		}
	}
	for _, p := range pods {
		if len(p.Addrs) != 2 {
			t.Fatalf("pod %s got %v, want an IPv4 and an IPv6 address", p.ID, p.Addrs)
		}
		for i, a := range p.Addrs {
			if want := netip.MustParsePrefix(e.NodeRanges(p.Node.Index)[i]); !want.Contains(a) {
				t.Fatalf("pod %s on %s got %s outside its node's range %s", p.ID, p.Node.Name, a, want)
			}
		}
	}
	kubetest.PingPods(t, pods)
	checkSourceKept(t, pods[0], pods[len(pods)-1])
	if mode == "vxlan" {
		fdb := e.Nodes[0].SB.Node.MustRun(t, "bridge", "fdb", "show", "dev", "pier.vxlan")
		if strings.Count(fdb, "dst 192.0.2.") != 2 {
			t.Errorf("want one FDB entry per other node:\n%s", fdb)
		}
		neigh := e.Nodes[0].SB.Node.MustRun(t, "ip", "neigh", "show", "dev", "pier.vxlan", "nud", "permanent")
		if strings.Count(neigh, "lladdr") != 4 {
			t.Errorf("want one neighbour per other node and family:\n%s", neigh)
		}
	}
	checkPierctlNode(t, e.Nodes[0])

	// A Node deleted: the others stop routing its ranges.
	gone := e.Nodes[2]
	start := time.Now()
	if err := e.API.Client.CoreV1().Nodes().Delete(context.Background(), gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.Nodes[:2] {
		kubetest.Poll(t, 5*time.Second, gone.Name+"'s routes to go from "+n.Name, func() bool {
			return !n.HasRouteTo(e.NodeRanges(3)[0]) && !n.HasRouteTo(e.NodeRanges(3)[1])
		}, n.Log)
	}
	t.Logf("MEASURE %s: a deleted Node's routes gone from the other nodes %v after the delete", mode, time.Since(start))

	// It registers again with other ranges (a reinstalled node): its pierd
	// rewrites its conflist, the others route the new ranges, and a new
	// pod there is reachable.
	moved := e.NodeRanges(33)
	ips := []string{gone.IP, gone.IP6}
	e.CreateNode(gone.Name, moved, ips...)
	kubetest.Poll(t, 10*time.Second, gone.Name+"'s conflist with its new ranges", func() bool {
		b, _ := os.ReadFile(filepath.Join(gone.ConfDir, "10-pier.conflist"))
		return strings.Contains(string(b), moved[0]) && strings.Contains(string(b), moved[1])
	}, gone.Log)
	gone.WaitConflist()
	kubetest.Poll(t, 10*time.Second, "node1's routes to "+gone.Name+"'s new ranges", func() bool {
		return e.Nodes[0].HasRouteTo(moved[0]) && e.Nodes[0].HasRouteTo(moved[1])
	}, e.Nodes[0].Log)
	kubetest.PingPods(t, []kubetest.Pod{pods[0], gone.AddPod(gone.Name + "-moved")})

	// A new node: the others route it once its Node has ranges (host-gw)
	// or once its pierd has published its VTEP (vxlan).
	n4 := e.AddNode(4, e.NodeRanges(4))
	start = time.Now()
	n4.Start()
	kubetest.Poll(t, 10*time.Second, "node4's routes on node1", func() bool {
		return e.Nodes[0].HasRouteTo(e.NodeRanges(4)[0]) && e.Nodes[0].HasRouteTo(e.NodeRanges(4)[1])
	}, e.Nodes[0].Log)
	t.Logf("MEASURE %s: a new node routed on the others %v after its pierd started", mode, time.Since(start))
	n4.WaitConflist()
	kubetest.PingPods(t, []kubetest.Pod{pods[0], n4.AddPod("node4-p0")})
}

// checkSourceKept: a TCP connection from one pod to a pod on another node
// arrives with the first pod's address: with ipMasq on, masquerade exempts
// the cluster CIDRs (nonMasqueradeCIDRs in the conflist).
func checkSourceKept(t *testing.T, from, to kubetest.Pod) {
	t.Helper()
	startEcho(t, to.NS, "tcp/:7")
	for _, dst := range to.Addrs {
		var src netip.Addr
		for _, a := range from.Addrs {
			if a.Is4() == dst.Is4() {
				src = a
			}
		}
		reply, err := echoFrom(t, from.NS, "tcp/"+netip.AddrPortFrom(dst, 7).String())
		seen, perr := netip.ParseAddrPort(strings.Fields(reply + " ")[0])
		if err != nil || perr != nil || seen.Addr().Unmap() != src {
			t.Fatalf("echo from %s to %s: reply %q, err %v: the source address did not survive", src, dst, reply, err)
		}
	}
}

// checkPierctlNode: pierctl node shows the node's ranges, where they and
// the routes come from, and every route pierd keeps, with its node.
func checkPierctlNode(t *testing.T, n *kubetest.Node) {
	t.Helper()
	out, err := n.SB.Node.Run(filepath.Join(n.Env.Bin, "pierctl"), "node", "--socket", n.Socket)
	if err != nil {
		t.Fatalf("pierctl node: %v\n%s", err, out)
	}
	for _, want := range []string{"kubernetes", n.Env.API.URL, n.Env.NodeRanges(1)[0], n.Env.NodeRanges(1)[1],
		"spec.podCIDRs of Node node1", n.Env.NodeRanges(2)[0], "node2", "node3"} {
		if !strings.Contains(out, want) {
			t.Errorf("pierctl node lacks %q:\n%s", want, out)
		}
	}
	s, err := nodestatus.Read(nodestatus.PathFor(n.Socket))
	if err != nil || len(s.Routes) != 4 {
		t.Fatalf("status file: %v %+v", err, s)
	}
	t.Logf("pierctl node:\n%s", out)
}

// TestKubeAPIServerDown: with the API server killed, pods keep starting
// (the plugin never calls the API: addresses come from the node's range in
// the embedded store) and pods on two nodes reach each other (routes stay:
// nothing is removed for want of an answer); pierd stays up, and once the
// API server is back its informers resume: a Node deleted then is
// unrouted.
func TestKubeAPIServerDown(t *testing.T) {
	e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: "host-gw", Dual: false})
	n1, n2 := e.AddNode(1, e.NodeRanges(1)), e.AddNode(2, e.NodeRanges(2))
	n1.Start()
	n2.Start()
	n1.WaitConflist()
	n2.WaitConflist()
	before := []kubetest.Pod{n1.AddPod("before-1"), n2.AddPod("before-2")}
	kubetest.PingPods(t, before)

	e.API.StopAPIServer()
	const perNode = 10
	var pods []kubetest.Pod
	start := time.Now()
	for i := range perNode {
		for _, n := range []*kubetest.Node{n1, n2} {
			pods = append(pods, n.AddPod(fmt.Sprintf("down-%s-%d", n.Name, i)))
		}
	}
	elapsed := time.Since(start)
	t.Logf("MEASURE API server down: %d pods started in %v (%.0f pods/s, ADD through the pier binary, one at a time)",
		len(pods), elapsed.Round(time.Millisecond), float64(len(pods))/elapsed.Seconds())
	kubetest.PingPods(t, append(before, pods[0], pods[1], pods[len(pods)-1]))
	for _, n := range []*kubetest.Node{n1, n2} {
		if !n.Running() {
			t.Fatalf("pierd on %s exited while the API server was down:\n%s", n.Name, kubetest.Tail(n.Log(), 4000))
		}
	}

	e.API.Restart(t)
	if err := e.API.Client.CoreV1().Nodes().Delete(context.Background(), n2.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Poll(t, 30*time.Second, "node2's route to go from node1 after the API server came back", func() bool {
		return !n1.HasRouteTo(e.NodeRanges(2)[0])
	}, n1.Log)
}

// TestKubeAllocatePodCIDRs: three pierds started at once with
// --allocate-pod-cidrs on Nodes without ranges: each node gets one IPv4
// and one IPv6 range of the cluster CIDRs, no two overlap, each is in its
// Node's spec.podCIDRs and its conflist, and pods on them (allocating
// through pierd: --cni-daemon-ipam) reach each other.
func TestKubeAllocatePodCIDRs(t *testing.T) {
	e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: "vxlan", Dual: true})
	// And the plugins allocate through pierd (daemon mode) here.
	e.Args = []string{"--allocate-pod-cidrs", "--cni-daemon-ipam"}
	for i := 1; i <= 3; i++ {
		e.AddNode(i, nil)
	}
	for _, n := range e.Nodes { // as close together as the test can
		n.Start()
	}
	var all []netip.Prefix
	var pods []kubetest.Pod
	for _, n := range e.Nodes {
		conf := n.WaitConflist()
		obj, err := e.API.Client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		if err != nil || len(obj.Spec.PodCIDRs) != 2 {
			t.Fatalf("%s's spec.podCIDRs: %v %v", n.Name, obj.Spec.PodCIDRs, err)
		}
		for i, s := range obj.Spec.PodCIDRs {
			p := netip.MustParsePrefix(s)
			cidr := netip.MustParsePrefix([]string{kubetest.ClusterV4, kubetest.ClusterV6}[i])
			if !cidr.Contains(p.Addr()) || p.Bits() != []int{24, 64}[i] || !strings.Contains(conf, `"subnet":"`+s+`"`) ||
				!strings.Contains(conf, `"daemonSocket":"`+n.Socket+`"`) {
				t.Fatalf("%s got %s (cluster CIDR %s), conflist %s", n.Name, s, cidr, conf)
			}
			for _, q := range all {
				if q.Overlaps(p) {
					t.Fatalf("%s got %s, overlapping %s", n.Name, p, q)
				}
			}
			all = append(all, p)
		}
		pods = append(pods, n.AddPod(n.Name+"-p"))
	}
	t.Logf("ranges: %v", all)
	kubetest.PingPods(t, pods)
}
