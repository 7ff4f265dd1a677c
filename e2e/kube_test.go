package e2e

// Kubernetes mode (internal/kube) with a real kube-apiserver: an underlay
// namespace holds the API server (internal/kubetest: etcd and
// kube-apiserver on 192.0.2.254) and a bridge joining the node namespaces
// (192.0.2.i, fd00:192::i); the test creates one Node object per node, as
// kubelet and the controller manager would, and starts one pierd per node
// in --datastore kubernetes, authenticated as the ServiceAccount of
// deploy/kubernetes/pier-kubernetes.yaml and authorized by exactly that
// manifest's RBAC rules. Pods are container namespaces attached by the
// built pier binary with the conflist pierd wrote. Every process is killed
// by PID and every namespace removed in t.Cleanup.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/nodestatus"
	"github.com/pier-cni/pier/internal/testnet"
)

const (
	kubeAPIIP     = "192.0.2.254"
	kubeCIDR4     = "10.244.0.0/16"
	kubeCIDR6     = "fd00:10:244::/56"
	pierdKubeUser = "system:serviceaccount:kube-system:pier"
)

// kubeEnv is an API server and the nodes around it.
type kubeEnv struct {
	t        *testing.T
	bin      string
	underlay *testnet.NS
	api      *kubetest.APIServer
	mode     string
	dual     bool     // IPv6 pod ranges and underlay addresses too
	args     []string // extra pierd flags for nodes started from now on
	nodes    []*kubeNode
}

type kubeNode struct {
	env      *kubeEnv
	index    int
	name     string
	ip, ip6  string
	sb       *testnet.Sandbox
	dir      string
	socket   string
	confDir  string
	dataDir  string
	cmd      *exec.Cmd
	stderr   *syncBuffer
	exited   chan struct{}
	conflist string // read once written
}

// syncBuffer is pierd's stderr, written by exec's goroutine and read by the
// test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newKubeEnv builds the underlay and starts the API server with the
// manifest's RBAC for pierd.
func newKubeEnv(t *testing.T, mode string, dual bool, users ...kubetest.User) *kubeEnv {
	t.Helper()
	testnet.RequireRoot(t)
	e := &kubeEnv{t: t, bin: testnet.Binaries(t), underlay: testnet.NewNS(t, "pt-ul-"), mode: mode, dual: dual}
	e.underlay.MustRun(t, "ip", "link", "add", "ul", "type", "bridge")
	e.underlay.MustRun(t, "ip", "addr", "add", kubeAPIIP+"/24", "dev", "ul")
	e.underlay.MustRun(t, "ip", "addr", "add", "fd00:192::fe/64", "dev", "ul", "nodad")
	e.underlay.MustRun(t, "ip", "link", "set", "ul", "up")
	start := time.Now()
	e.api = kubetest.Start(t, kubetest.Options{NS: e.underlay, Addr: netip.MustParseAddr(kubeAPIIP),
		Users: append(users, kubetest.User{Name: pierdKubeUser, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"}})})
	t.Logf("MEASURE kube-apiserver ready in %v", time.Since(start))
	applyManifestRBAC(t, e.api)
	return e
}

// applyManifestRBAC creates the RBAC objects of pier-kubernetes.yaml, so
// pierd runs with the rules the manifest ships and no more.
func applyManifestRBAC(t *testing.T, api *kubetest.APIServer) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", "pier-kubernetes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rbac := api.Client.RbacV1()
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		var err error
		switch meta.Kind {
		case "ClusterRole":
			var o rbacv1.ClusterRole
			if err = yaml.Unmarshal([]byte(doc), &o); err == nil {
				_, err = rbac.ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
			}
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			if err = yaml.Unmarshal([]byte(doc), &o); err == nil {
				_, err = rbac.ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
			}
		case "Role":
			var o rbacv1.Role
			if err = yaml.Unmarshal([]byte(doc), &o); err == nil {
				_, err = rbac.Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "RoleBinding":
			var o rbacv1.RoleBinding
			if err = yaml.Unmarshal([]byte(doc), &o); err == nil {
				_, err = rbac.RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		}
		if err != nil {
			t.Fatalf("apply %s of the manifest: %v", meta.Kind, err)
		}
	}
}

func (e *kubeEnv) clusterCIDRs() string {
	if e.dual {
		return kubeCIDR4 + "," + kubeCIDR6
	}
	return kubeCIDR4
}

// nodeRanges is what a controller manager would give node i: the i-th /24
// (and /64) of the cluster CIDRs.
func (e *kubeEnv) nodeRanges(i int) []string {
	r := []string{fmt.Sprintf("10.244.%d.0/24", i)}
	if e.dual {
		r = append(r, fmt.Sprintf("fd00:10:244:%x::/64", i))
	}
	return r
}

// addNode makes node i's namespace on the underlay and its Node object
// (with ranges unless none is given), without starting its pierd.
func (e *kubeEnv) addNode(i int, ranges []string) *kubeNode {
	e.t.Helper()
	n := e.join(i, testnet.New(e.t))
	ips := []string{n.ip}
	if n.ip6 != "" {
		ips = append(ips, n.ip6)
	}
	e.createNode(n.name, ranges, ips...)
	return n
}

// join puts node i's namespace (of sb) on the underlay, without a Node
// object (kubelet registers its own).
func (e *kubeEnv) join(i int, sb *testnet.Sandbox) *kubeNode {
	t := e.t
	t.Helper()
	n := &kubeNode{env: e, index: i, name: fmt.Sprintf("node%d", i), ip: fmt.Sprintf("192.0.2.%d", i), sb: sb, dir: t.TempDir()}
	n.socket, n.confDir, n.dataDir = filepath.Join(n.dir, "run", "pierd.sock"), filepath.Join(n.dir, "net.d"), filepath.Join(n.dir, "data")
	peer := fmt.Sprintf("ul%d", i)
	e.underlay.MustRun(t, "ip", "link", "add", peer, "type", "veth", "peer", "name", "ul0", "netns", n.sb.Node.Name)
	e.underlay.MustRun(t, "ip", "link", "set", peer, "master", "ul", "up")
	n.sb.Node.MustRun(t, "ip", "addr", "add", n.ip+"/24", "dev", "ul0")
	if e.dual {
		n.ip6 = fmt.Sprintf("fd00:192::%x", i)
		n.sb.Node.MustRun(t, "ip", "addr", "add", n.ip6+"/64", "dev", "ul0", "nodad")
	}
	n.sb.Node.MustRun(t, "ip", "link", "set", "ul0", "up")
	e.nodes = append(e.nodes, n)
	t.Cleanup(n.kill)
	return n
}

func (e *kubeEnv) createNode(name string, ranges []string, ips ...string) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: ranges}}
	if len(ranges) > 0 {
		obj.Spec.PodCIDR = ranges[0]
	}
	if _, err := e.api.Client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A running pierd may annotate the Node in between (its VTEP): re-read
	// on a conflict, as kubelet does.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := e.api.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = nil
		for _, ip := range ips {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
		}
		_, err = e.api.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// start starts the node's pierd in Kubernetes mode.
func (n *kubeNode) start() {
	t := n.env.t
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(n.socket), 0o700); err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(filepath.Join(n.env.bin, "pierd"), "--datastore", "kubernetes",
		"--kubeconfig", n.env.api.Kubeconfig(t, pierdKubeUser), "--node-name", n.name, "--routing", n.env.mode,
		"--cluster-cidr", n.env.clusterCIDRs(), "--socket", n.socket, "--data-dir", n.dataDir, "--metrics-addr", "",
		"--cni-conf-dir", n.confDir, "--log-level", "debug")
	n.cmd.Args = append(n.cmd.Args, n.env.args...)
	n.stderr = &syncBuffer{}
	n.cmd.Stdout, n.cmd.Stderr = n.stderr, n.stderr
	if err := testnet.StartIn(n.sb.Node.Path, n.cmd); err != nil {
		t.Fatalf("start pierd: %v", err)
	}
	n.exited = make(chan struct{})
	cmd, exited := n.cmd, n.exited
	go func() { _ = cmd.Wait(); close(exited) }()
}

func (n *kubeNode) kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill() // our own child, by PID
	<-n.exited
	n.cmd = nil
	if n.env.t.Failed() {
		n.env.t.Logf("pierd on %s:\n%s", n.name, tail(n.stderr.String(), 6000))
	}
}

// stacks makes pierd print its goroutines (SIGQUIT: the Go runtime dumps
// them and exits) and returns its output: what it was waiting for.
func (n *kubeNode) stacks() string {
	if n.cmd != nil {
		_ = n.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
		}
	}
	return n.stderr.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitConflist waits for the conflist pierd writes once the node's ranges
// are known, and returns the pier plugin's config as the plugin reads it.
func (n *kubeNode) waitConflist() string {
	t := n.env.t
	t.Helper()
	path := filepath.Join(n.confDir, "10-pier.conflist")
	var b []byte
	poll(t, 30*time.Second, "the conflist of "+n.name, func() bool {
		var err error
		b, err = os.ReadFile(path)
		return err == nil
	}, n.stacks)
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("conflist of %s: %v\n%s", n.name, err, b)
	}
	p := list.Plugins[0]
	p["name"], p["cniVersion"] = list.Name, list.CNIVersion
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	n.conflist = string(out)
	return n.conflist
}

// poll calls f every 20 ms until it holds or d passes; the failure shows
// what logs says.
func poll(t *testing.T, d time.Duration, what string, f func() bool, logs func() string) {
	t.Helper()
	for end := time.Now().Add(d); !f(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			msg := ""
			if logs != nil {
				msg = tail(logs(), 60000)
			}
			t.Fatalf("timed out waiting for %s\n%s", what, msg)
		}
	}
}

// kubePod is a container namespace attached by pier with the node's
// conflist.
type kubePod struct {
	node  *kubeNode
	a     attachment
	addrs []netip.Addr
	took  time.Duration
}

func (n *kubeNode) run(verb string, a attachment) testnet.PluginRun {
	netns := ""
	if a.ns != nil {
		netns = a.ns.Path
	}
	env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + a.id, "CNI_NETNS=" + netns,
		"CNI_IFNAME=eth0", "CNI_PATH=" + n.env.bin}
	return n.sb.Exec(filepath.Join(n.env.bin, "pier"), env, []byte(n.conflist))
}

func (n *kubeNode) addPod(id string) kubePod {
	t := n.env.t
	t.Helper()
	a := attachment{ns: n.sb.Container(), id: id, ifName: "eth0"}
	start := time.Now()
	r := n.run("ADD", a)
	took := time.Since(start)
	if r.ExitCode != 0 {
		t.Fatalf("ADD %s on %s: exit %d\n%s\n%s", id, n.name, r.ExitCode, r.Stdout, r.Stderr)
	}
	var res current.Result
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("ADD result: %v\n%s", err, r.Stdout)
	}
	p := kubePod{node: n, a: a, took: took}
	for _, ipc := range res.IPs {
		ip, _ := netip.AddrFromSlice(ipc.Address.IP)
		p.addrs = append(p.addrs, ip.Unmap())
	}
	return p
}

// pingPods pings every address of every pod from every other pod, retrying
// each pair for a few seconds while routes converge.
func pingPods(t *testing.T, pods []kubePod) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from.a.id == to.a.id {
				continue
			}
			for _, ip := range to.addrs {
				var out string
				var err error
				for end := time.Now().Add(10 * time.Second); ; {
					out, err = from.a.ns.Run("ping", "-c", "1", "-W", "1", "-q", ip.String())
					if err == nil || time.Now().After(end) {
						break
					}
				}
				if err != nil {
					t.Fatalf("%s on %s cannot ping %s (%s on %s): %v\n%s", from.a.id, from.node.name, ip, to.a.id, to.node.name, err, out)
				}
			}
		}
	}
}

// pierRoutes lists the routes with Pier's protocol in ns, "dst via gw".
func pierRoutes(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		var rs []struct {
			Dst     string `json:"dst"`
			Gateway string `json:"gateway"`
		}
		if err := json.Unmarshal([]byte(ns.MustRun(t, "ip", "-j", fam, "route", "show", "proto", "80")), &rs); err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			out = append(out, r.Dst+" via "+r.Gateway)
		}
	}
	slices.Sort(out)
	return out
}

func hasRouteTo(t *testing.T, n *kubeNode, dst string) bool {
	for _, r := range pierRoutes(t, n.sb.Node) {
		if strings.HasPrefix(r, dst+" ") {
			return true
		}
	}
	return false
}

// TestKubeHostGW and TestKubeVXLAN: three nodes with dual-stack ranges
// from their Node objects, two pods each through the pier binary; every
// pod pings every address of every other; traffic between nodes keeps the
// pod's source address (masquerade exempts the cluster CIDRs); pierctl
// node shows the ranges and where the routes come from; a deleted Node's
// routes go from the others; a new node is routed.
func TestKubeHostGW(t *testing.T) { testKubePing(t, "host-gw") }
func TestKubeVXLAN(t *testing.T)  { testKubePing(t, "vxlan") }

func testKubePing(t *testing.T, mode string) {
	e := newKubeEnv(t, mode, true)
	for i := 1; i <= 3; i++ {
		e.addNode(i, e.nodeRanges(i)).start()
	}
	var pods []kubePod
	for _, n := range e.nodes {
		n.waitConflist()
		for j := range 2 {
			pods = append(pods, n.addPod(fmt.Sprintf("%s-p%d", n.name, j)))
		}
	}
	for _, p := range pods {
		if len(p.addrs) != 2 {
			t.Fatalf("pod %s got %v, want an IPv4 and an IPv6 address", p.a.id, p.addrs)
		}
		for i, a := range p.addrs {
			if want := netip.MustParsePrefix(e.nodeRanges(p.node.index)[i]); !want.Contains(a) {
				t.Fatalf("pod %s on %s got %s outside its node's range %s", p.a.id, p.node.name, a, want)
			}
		}
	}
	pingPods(t, pods)
	checkSourceKept(t, pods[0], pods[len(pods)-1])
	if mode == "vxlan" {
		fdb := e.nodes[0].sb.Node.MustRun(t, "bridge", "fdb", "show", "dev", "pier.vxlan")
		if strings.Count(fdb, "dst 192.0.2.") != 2 {
			t.Errorf("want one FDB entry per other node:\n%s", fdb)
		}
		neigh := e.nodes[0].sb.Node.MustRun(t, "ip", "neigh", "show", "dev", "pier.vxlan", "nud", "permanent")
		if strings.Count(neigh, "lladdr") != 4 {
			t.Errorf("want one neighbour per other node and family:\n%s", neigh)
		}
	}
	checkPierctlNode(t, e.nodes[0])

	// A Node deleted: the others stop routing its ranges.
	gone := e.nodes[2]
	start := time.Now()
	if err := e.api.Client.CoreV1().Nodes().Delete(context.Background(), gone.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.nodes[:2] {
		poll(t, 5*time.Second, gone.name+"'s routes to go from "+n.name, func() bool {
			return !hasRouteTo(t, n, e.nodeRanges(3)[0]) && !hasRouteTo(t, n, e.nodeRanges(3)[1])
		}, n.stderr.String)
	}
	t.Logf("MEASURE %s: a deleted Node's routes gone from the other nodes %v after the delete", mode, time.Since(start))

	// It registers again with other ranges (a reinstalled node): its pierd
	// rewrites its conflist, the others route the new ranges, and a new
	// pod there is reachable.
	moved := e.nodeRanges(33)
	ips := []string{gone.ip, gone.ip6}
	e.createNode(gone.name, moved, ips...)
	poll(t, 10*time.Second, gone.name+"'s conflist with its new ranges", func() bool {
		b, _ := os.ReadFile(filepath.Join(gone.confDir, "10-pier.conflist"))
		return strings.Contains(string(b), moved[0]) && strings.Contains(string(b), moved[1])
	}, gone.stderr.String)
	gone.waitConflist()
	poll(t, 10*time.Second, "node1's routes to "+gone.name+"'s new ranges", func() bool {
		return hasRouteTo(t, e.nodes[0], moved[0]) && hasRouteTo(t, e.nodes[0], moved[1])
	}, e.nodes[0].stderr.String)
	pingPods(t, []kubePod{pods[0], gone.addPod(gone.name + "-moved")})

	// A new node: the others route it once its Node has ranges (host-gw)
	// or once its pierd has published its VTEP (vxlan).
	n4 := e.addNode(4, e.nodeRanges(4))
	start = time.Now()
	n4.start()
	poll(t, 10*time.Second, "node4's routes on node1", func() bool {
		return hasRouteTo(t, e.nodes[0], e.nodeRanges(4)[0]) && hasRouteTo(t, e.nodes[0], e.nodeRanges(4)[1])
	}, e.nodes[0].stderr.String)
	t.Logf("MEASURE %s: a new node routed on the others %v after its pierd started", mode, time.Since(start))
	n4.waitConflist()
	pingPods(t, []kubePod{pods[0], n4.addPod("node4-p0")})
}

// checkSourceKept: a TCP connection from one pod to a pod on another node
// arrives with the first pod's address: with ipMasq on, masquerade exempts
// the cluster CIDRs (nonMasqueradeCIDRs in the conflist).
func checkSourceKept(t *testing.T, from, to kubePod) {
	t.Helper()
	startEcho(t, to.a.ns, "tcp/:7")
	for _, dst := range to.addrs {
		var src netip.Addr
		for _, a := range from.addrs {
			if a.Is4() == dst.Is4() {
				src = a
			}
		}
		reply, err := echoFrom(t, from.a.ns, "tcp/"+netip.AddrPortFrom(dst, 7).String())
		seen, perr := netip.ParseAddrPort(strings.Fields(reply + " ")[0])
		if err != nil || perr != nil || seen.Addr().Unmap() != src {
			t.Fatalf("echo from %s to %s: reply %q, err %v: the source address did not survive", src, dst, reply, err)
		}
	}
}

// checkPierctlNode: pierctl node shows the node's ranges, where they and
// the routes come from, and every route pierd keeps, with its node.
func checkPierctlNode(t *testing.T, n *kubeNode) {
	t.Helper()
	out, err := n.sb.Node.Run(filepath.Join(n.env.bin, "pierctl"), "node", "--socket", n.socket)
	if err != nil {
		t.Fatalf("pierctl node: %v\n%s", err, out)
	}
	for _, want := range []string{"kubernetes", n.env.api.URL, n.env.nodeRanges(1)[0], n.env.nodeRanges(1)[1],
		"spec.podCIDRs of Node node1", n.env.nodeRanges(2)[0], "node2", "node3"} {
		if !strings.Contains(out, want) {
			t.Errorf("pierctl node lacks %q:\n%s", want, out)
		}
	}
	s, err := nodestatus.Read(nodestatus.PathFor(n.socket))
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
	e := newKubeEnv(t, "host-gw", false)
	n1, n2 := e.addNode(1, e.nodeRanges(1)), e.addNode(2, e.nodeRanges(2))
	n1.start()
	n2.start()
	n1.waitConflist()
	n2.waitConflist()
	before := []kubePod{n1.addPod("before-1"), n2.addPod("before-2")}
	pingPods(t, before)

	e.api.StopAPIServer()
	const perNode = 10
	var pods []kubePod
	start := time.Now()
	for i := range perNode {
		for _, n := range []*kubeNode{n1, n2} {
			pods = append(pods, n.addPod(fmt.Sprintf("down-%s-%d", n.name, i)))
		}
	}
	elapsed := time.Since(start)
	t.Logf("MEASURE API server down: %d pods started in %v (%.0f pods/s, ADD through the pier binary, one at a time)",
		len(pods), elapsed.Round(time.Millisecond), float64(len(pods))/elapsed.Seconds())
	pingPods(t, append(before, pods[0], pods[1], pods[len(pods)-1]))
	for _, n := range []*kubeNode{n1, n2} {
		select {
		case <-n.exited:
			t.Fatalf("pierd on %s exited while the API server was down:\n%s", n.name, tail(n.stderr.String(), 4000))
		default:
		}
	}

	e.api.Restart(t)
	if err := e.api.Client.CoreV1().Nodes().Delete(context.Background(), n2.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, "node2's route to go from node1 after the API server came back", func() bool {
		return !hasRouteTo(t, n1, e.nodeRanges(2)[0])
	}, n1.stderr.String)
}

// TestKubeAllocatePodCIDRs: three pierds started at once with
// --allocate-pod-cidrs on Nodes without ranges: each node gets one IPv4
// and one IPv6 range of the cluster CIDRs, no two overlap, each is in its
// Node's spec.podCIDRs and its conflist, and pods on them reach each
// other.
func TestKubeAllocatePodCIDRs(t *testing.T) {
	e := newKubeEnv(t, "vxlan", true)
	e.args = []string{"--allocate-pod-cidrs"}
	for i := 1; i <= 3; i++ {
		e.addNode(i, nil)
	}
	for _, n := range e.nodes { // as close together as the test can
		n.start()
	}
	var all []netip.Prefix
	var pods []kubePod
	for _, n := range e.nodes {
		conf := n.waitConflist()
		obj, err := e.api.Client.CoreV1().Nodes().Get(context.Background(), n.name, metav1.GetOptions{})
		if err != nil || len(obj.Spec.PodCIDRs) != 2 {
			t.Fatalf("%s's spec.podCIDRs: %v %v", n.name, obj.Spec.PodCIDRs, err)
		}
		for i, s := range obj.Spec.PodCIDRs {
			p := netip.MustParsePrefix(s)
			cidr := netip.MustParsePrefix([]string{kubeCIDR4, kubeCIDR6}[i])
			if !cidr.Contains(p.Addr()) || p.Bits() != []int{24, 64}[i] || !strings.Contains(conf, `"subnet":"`+s+`"`) {
				t.Fatalf("%s got %s (cluster CIDR %s), conflist %s", n.name, s, cidr, conf)
			}
			for _, q := range all {
				if q.Overlaps(p) {
					t.Fatalf("%s got %s, overlapping %s", n.name, p, q)
				}
			}
			all = append(all, p)
		}
		pods = append(pods, n.addPod(n.name+"-p"))
	}
	t.Logf("ranges: %v", all)
	pingPods(t, pods)
}
