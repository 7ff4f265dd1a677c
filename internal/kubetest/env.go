package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/pier-cni/pier/internal/testnet"
)

// A cluster of node namespaces around the API server, for tests and
// benchmarks of pierd's Kubernetes mode (and of anything that needs nodes
// on the API): an underlay namespace holds the API server on APIIP and a
// bridge joining the node namespaces (192.0.2.i, fd00:192::i); each node's
// Node object is created as kubelet and the controller manager would leave
// it, and its pierd runs in --datastore kubernetes, authenticated as the
// ServiceAccount of deploy/kubernetes/pier-kubernetes.yaml and authorized
// by exactly that manifest's RBAC rules. Pods are container namespaces
// attached by the built pier binary with the conflist pierd wrote. Every
// process is killed by PID and every namespace removed in t.Cleanup.
const (
	APIIP      = "192.0.2.254"
	ClusterV4  = "10.244.0.0/16"
	ClusterV6  = "fd00:10:244::/56"
	PierdUser  = "system:serviceaccount:kube-system:pier"
	pierdGroup = "system:serviceaccounts:kube-system"
)

// EnvOptions configure NewEnv.
type EnvOptions struct {
	// Mode is pierd's --routing.
	Mode string
	// Dual gives nodes IPv6 pod ranges and underlay addresses too.
	Dual bool
	// Users are more API identities (kubelets, say), besides pierd's.
	Users []User
}

// Env is an API server and the nodes around it.
type Env struct {
	T        testing.TB
	Bin      string // pier, pier-ipam, pierd, pierctl (testnet.Binaries)
	Underlay *testnet.NS
	API      *APIServer
	Mode     string
	Dual     bool
	// Args are extra pierd flags for the nodes started from now on.
	Args  []string
	Nodes []*Node
}

// Node is a node namespace on the underlay, with its pierd.
type Node struct {
	Env     *Env
	Index   int
	Name    string
	IP, IP6 string
	SB      *testnet.Sandbox
	Dir     string // the node's temp dir
	Socket  string
	ConfDir string // where pierd writes the conflist (--cni-conf-dir)
	DataDir string
	// Conflist is the pier plugin's config as the plugin reads it, once
	// WaitConflist has seen it.
	Conflist string

	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{}
}

// NewEnv builds the underlay and starts the API server, with the
// manifest's RBAC objects for pierd.
func NewEnv(t testing.TB, o EnvOptions) *Env {
	t.Helper()
	testnet.RequireRoot(t)
	e := &Env{T: t, Bin: testnet.Binaries(t), Underlay: testnet.NewNS(t, "pt-ul-"), Mode: o.Mode, Dual: o.Dual}
	e.Underlay.MustRun(t, "ip", "link", "add", "ul", "type", "bridge")
	e.Underlay.MustRun(t, "ip", "addr", "add", APIIP+"/24", "dev", "ul")
	e.Underlay.MustRun(t, "ip", "addr", "add", "fd00:192::fe/64", "dev", "ul", "nodad")
	e.Underlay.MustRun(t, "ip", "link", "set", "ul", "up")
	start := time.Now()
	e.API = Start(t, Options{NS: e.Underlay, Addr: netip.MustParseAddr(APIIP),
		Users: append(o.Users, User{Name: PierdUser, Groups: []string{"system:serviceaccounts", pierdGroup}})})
	t.Logf("MEASURE kube-apiserver ready in %v", time.Since(start))
	applyManifestRBAC(t, e.API)
	return e
}

// ModuleRoot is the directory of this module's go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// applyManifestRBAC creates the RBAC objects of pier-kubernetes.yaml (and
// the namespace its Role lives in), so pierd runs with the rules the
// manifest ships and no more.
func applyManifestRBAC(t testing.TB, api *APIServer) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(ModuleRoot(t), "deploy", "kubernetes", "pier-kubernetes.yaml"))
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
		case "Namespace":
			var o corev1.Namespace
			if err = yaml.Unmarshal([]byte(doc), &o); err == nil {
				_, err = api.Client.CoreV1().Namespaces().Create(ctx, &o, metav1.CreateOptions{})
			}
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

// ClusterCIDRs is pierd's --cluster-cidr.
func (e *Env) ClusterCIDRs() string {
	if e.Dual {
		return ClusterV4 + "," + ClusterV6
	}
	return ClusterV4
}

// NodeRanges is what a controller manager would give node i: the i-th /24
// (and /64) of the cluster CIDRs.
func (e *Env) NodeRanges(i int) []string {
	r := []string{fmt.Sprintf("10.244.%d.0/24", i)}
	if e.Dual {
		r = append(r, fmt.Sprintf("fd00:10:244:%x::/64", i))
	}
	return r
}

// AddNode makes node i's namespace on the underlay and its Node object
// (with ranges unless none is given), without starting its pierd.
func (e *Env) AddNode(i int, ranges []string) *Node {
	e.T.Helper()
	n := e.Join(i, testnet.New(e.T))
	ips := []string{n.IP}
	if n.IP6 != "" {
		ips = append(ips, n.IP6)
	}
	e.CreateNode(n.Name, ranges, ips...)
	return n
}

// Join puts node i's namespace (sb's) on the underlay, without a Node
// object (a kubelet registers its own).
func (e *Env) Join(i int, sb *testnet.Sandbox) *Node {
	t := e.T
	t.Helper()
	n := &Node{Env: e, Index: i, Name: fmt.Sprintf("node%d", i), IP: fmt.Sprintf("192.0.2.%d", i), SB: sb, Dir: t.TempDir()}
	n.Socket, n.ConfDir, n.DataDir = filepath.Join(n.Dir, "run", "pierd.sock"), filepath.Join(n.Dir, "net.d"), filepath.Join(n.Dir, "data")
	peer := fmt.Sprintf("ul%d", i)
	e.Underlay.MustRun(t, "ip", "link", "add", peer, "type", "veth", "peer", "name", "ul0", "netns", n.SB.Node.Name)
	e.Underlay.MustRun(t, "ip", "link", "set", peer, "master", "ul", "up")
	n.SB.Node.MustRun(t, "ip", "addr", "add", n.IP+"/24", "dev", "ul0")
	if e.Dual {
		n.IP6 = fmt.Sprintf("fd00:192::%x", i)
		n.SB.Node.MustRun(t, "ip", "addr", "add", n.IP6+"/64", "dev", "ul0", "nodad")
	}
	n.SB.Node.MustRun(t, "ip", "link", "set", "ul0", "up")
	e.Nodes = append(e.Nodes, n)
	t.Cleanup(n.Kill)
	return n
}

// CreateNode creates a Node object with pod ranges (none when ranges is
// empty) and InternalIPs.
func (e *Env) CreateNode(name string, ranges []string, ips ...string) {
	t := e.T
	t.Helper()
	ctx := context.Background()
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: ranges}}
	if len(ranges) > 0 {
		obj.Spec.PodCIDR = ranges[0]
	}
	if _, err := e.API.Client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A running pierd may annotate the Node in between (its VTEP): re-read
	// on a conflict, as kubelet does.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := e.API.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = nil
		for _, ip := range ips {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
		}
		_, err = e.API.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Start starts the node's pierd in Kubernetes mode, with Env.Args.
func (n *Node) Start() {
	t := n.Env.T
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(n.Socket), 0o700); err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(filepath.Join(n.Env.Bin, "pierd"), "--datastore", "kubernetes",
		"--kubeconfig", n.Env.API.Kubeconfig(t, PierdUser), "--node-name", n.Name, "--routing", n.Env.Mode,
		"--cluster-cidr", n.Env.ClusterCIDRs(), "--socket", n.Socket, "--data-dir", n.DataDir, "--metrics-addr", "",
		"--cni-conf-dir", n.ConfDir, "--log-level", "debug")
	n.cmd.Args = append(n.cmd.Args, n.Env.Args...)
	n.stderr = &lockedBuffer{}
	n.cmd.Stdout, n.cmd.Stderr = n.stderr, n.stderr
	if err := testnet.StartIn(n.SB.Node.Path, n.cmd); err != nil {
		t.Fatalf("start pierd: %v", err)
	}
	n.exited = make(chan struct{})
	cmd, exited := n.cmd, n.exited
	go func() { _ = cmd.Wait(); close(exited) }()
}

// PID is pierd's process id (0 when not running).
func (n *Node) PID() int {
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Running says whether pierd is still running.
func (n *Node) Running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Kill kills pierd (by PID) and waits for it; a failed test gets its log.
func (n *Node) Kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill() // our own child, by PID
	<-n.exited
	n.cmd = nil
	if n.Env.T.Failed() {
		n.Env.T.Logf("pierd on %s:\n%s", n.Name, Tail(n.stderr.String(), 6000))
	}
}

// Log is pierd's output so far.
func (n *Node) Log() string {
	if n.stderr == nil {
		return ""
	}
	return n.stderr.String()
}

// Stacks makes pierd print its goroutines (SIGQUIT: the Go runtime dumps
// them and exits) and returns its output: what it was waiting for.
func (n *Node) Stacks() string {
	if n.cmd != nil {
		_ = n.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
		}
	}
	return n.Log()
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// WaitConflist waits for the conflist pierd writes once the node's ranges
// are known, and returns (and keeps in Conflist) the pier plugin's config
// as the plugin reads it.
func (n *Node) WaitConflist() string {
	t := n.Env.T
	t.Helper()
	path := filepath.Join(n.ConfDir, "10-pier.conflist")
	var b []byte
	Poll(t, 30*time.Second, "the conflist of "+n.Name, func() bool {
		var err error
		b, err = os.ReadFile(path)
		return err == nil
	}, n.Stacks)
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("conflist of %s: %v\n%s", n.Name, err, b)
	}
	p := list.Plugins[0]
	p["name"], p["cniVersion"] = list.Name, list.CNIVersion
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	n.Conflist = string(out)
	return n.Conflist
}

// Poll calls f every 20 ms until it holds or d passes; the failure shows
// what logs says.
func Poll(t testing.TB, d time.Duration, what string, f func() bool, logs func() string) {
	t.Helper()
	for end := time.Now().Add(d); !f(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			msg := ""
			if logs != nil {
				msg = Tail(logs(), 60000)
			}
			t.Fatalf("timed out waiting for %s\n%s", what, msg)
		}
	}
}

// Pod is a container namespace attached by pier with its node's conflist.
type Pod struct {
	Node  *Node
	NS    *testnet.NS
	ID    string
	Addrs []netip.Addr
	Took  time.Duration // the ADD's wall time (a process, as a runtime runs it)
}

// Exec runs the pier binary with a CNI verb for the attachment (ns, id,
// eth0) in the node namespace.
func (n *Node) Exec(verb string, ns *testnet.NS, id string) testnet.PluginRun {
	netns := ""
	if ns != nil {
		netns = ns.Path
	}
	env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns,
		"CNI_IFNAME=eth0", "CNI_PATH=" + n.Env.Bin}
	return n.SB.Exec(filepath.Join(n.Env.Bin, "pier"), env, []byte(n.Conflist))
}

// AddPod attaches a new container namespace.
func (n *Node) AddPod(id string) Pod {
	t := n.Env.T
	t.Helper()
	ns := n.SB.Container()
	start := time.Now()
	r := n.Exec("ADD", ns, id)
	took := time.Since(start)
	if r.ExitCode != 0 {
		t.Fatalf("ADD %s on %s: exit %d\n%s\n%s", id, n.Name, r.ExitCode, r.Stdout, r.Stderr)
	}
	var res current.Result
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("ADD result: %v\n%s", err, r.Stdout)
	}
	p := Pod{Node: n, NS: ns, ID: id, Took: took}
	for _, ipc := range res.IPs {
		ip, _ := netip.AddrFromSlice(ipc.Address.IP)
		p.Addrs = append(p.Addrs, ip.Unmap())
	}
	return p
}

// PingPods pings every address of every pod from every other pod,
// retrying each pair for a few seconds while routes converge.
func PingPods(t testing.TB, pods []Pod) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from.ID == to.ID {
				continue
			}
			for _, ip := range to.Addrs {
				var out string
				var err error
				for end := time.Now().Add(10 * time.Second); ; {
					out, err = from.NS.Run("ping", "-c", "1", "-W", "1", "-q", ip.String())
					if err == nil || time.Now().After(end) {
						break
					}
				}
				if err != nil {
					t.Fatalf("%s on %s cannot ping %s (%s on %s): %v\n%s", from.ID, from.Node.Name, ip, to.ID, to.Node.Name, err, out)
				}
			}
		}
	}
}

// PierRoutes lists the routes with Pier's protocol in ns, "dst via gw".
func PierRoutes(t testing.TB, ns *testnet.NS) []string {
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
	return out
}

// HasRouteTo says whether the node routes dst with Pier's protocol.
func (n *Node) HasRouteTo(dst string) bool {
	for _, r := range PierRoutes(n.Env.T, n.SB.Node) {
		if strings.HasPrefix(r, dst+" ") {
			return true
		}
	}
	return false
}
