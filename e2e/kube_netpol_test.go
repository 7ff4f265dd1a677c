package e2e

// Network policy through a real kube-apiserver: two node namespaces of
// internal/kubetest's Env, each with pierd --datastore kubernetes
// --network-policy (with exactly the RBAC of
// deploy/kubernetes/pier-kubernetes.yaml), the nine pods of the probe
// matrix as Pod objects created through the API, attached by the pier
// binary with the conflist pierd wrote and kubelet's CNI_ARGS, their
// addresses reported through the API as kubelet does; policies, pod and
// namespace labels changed through the API.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/netpol/netpoltest"
)

// kubeNP is the probe matrix's cluster with pierd and the API server in
// the loop. It probes and explains as npCluster does; objects go to the
// API server.
type kubeNP struct {
	*npCluster
	env *kubetest.Env
	api kubernetes.Interface
}

// newKubeNP builds the cluster: Env with two nodes (host-gw routes), the
// namespaces and the pods of the probe matrix through the API, each with
// its echo server.
func newKubeNP(t *testing.T) *kubeNP {
	t.Helper()
	k := newKubeNodes(t, nil)
	for _, ns := range netpoltest.NamespaceNames {
		k.mustCreateNS(ns, nil)
	}
	for _, pod := range netpoltest.PodNames {
		p := k.startPod(pod, netpoltest.NodeOf(pod), nil)
		startEcho(t, p.ns, "tcp/:80,tcp/:81,udp/:80,udp/:81,udp/:53")
	}
	return k
}

// newKubeNodes starts the API server and two nodes with pierd
// --network-policy (beforeStart, when set, runs in each node before its
// pierd starts), and waits for their conflists.
func newKubeNodes(t *testing.T, beforeStart func(*kubetest.Node)) *kubeNP {
	t.Helper()
	e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: "host-gw"})
	e.Args = []string{"--network-policy"}
	c := &npCluster{t: t, bin: e.Bin, pods: map[string]*npPod{}, port: 20000}
	k := &kubeNP{npCluster: c, env: e, api: e.API.Client}
	for i := 1; i <= 2; i++ {
		n := e.AddNode(i, e.NodeRanges(i))
		if beforeStart != nil {
			beforeStart(n)
		}
		n.Start()
		f, err := os.Open(n.SB.Node.Path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		c.nodes[i-1] = &npNode{name: n.Name, ip: n.IP, cidr: netip.MustParsePrefix(e.NodeRanges(i)[0]), sb: n.SB, fd: int(f.Fd())}
	}
	for _, n := range e.Nodes {
		if conf := n.WaitConflist(); !strings.Contains(conf, `"networkPolicy":true`) {
			t.Fatalf("the conflist of %s lacks networkPolicy: %s", n.Name, conf)
		}
	}
	return k
}

// mustCreateNS creates a namespace through the API with its "default"
// ServiceAccount, which kube-controller-manager would make and without
// which the API server admits no pod there.
func (k *kubeNP) mustCreateNS(name string, labels map[string]string) {
	ctx := context.Background()
	if _, err := k.api.CoreV1().Namespaces().Create(ctx, netpoltest.NamespaceObject(name, labels), metav1.CreateOptions{}); err != nil {
		k.t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if _, err := k.api.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

// startPod creates the pod through the API scheduled to its node, waits
// until pierd made its chains from the watch (as kubelet starts the
// sandbox after the scheduler's binding), attaches it and reports its
// address in its status.
func (k *kubeNP) startPod(pod string, node int, labels map[string]string) *npPod {
	t := k.t
	t.Helper()
	ctx := context.Background()
	obj := netpoltest.PodObject(pod, fmt.Sprintf("node%d", node), netip.Addr{}, labels)
	if _, err := k.api.CoreV1().Pods(obj.Namespace).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := k.env.Nodes[node-1]
	chain := dataplane.PodChainName(dataplane.Ref{Namespace: obj.Namespace, Name: obj.Name}, dataplane.Ingress)
	kubetest.Poll(t, 30*time.Second, "pierd on "+n.Name+" to make the chains of "+pod, func() bool {
		_, err := n.SB.Node.Run("nft", "list", "chain", "inet", "pier", chain)
		return err == nil
	}, n.Log)
	p := k.attachKube(pod, node)
	k.reportAddr(p)
	return p
}

// attachKube runs the plugin's ADD with the conflist pierd wrote and
// kubelet's CNI_ARGS.
func (k *kubeNP) attachKube(pod string, node int) *npPod {
	t := k.t
	t.Helper()
	n := k.env.Nodes[node-1]
	ns, name, _ := strings.Cut(pod, "/")
	p := &npPod{name: pod, node: k.nodes[node-1], ns: n.SB.Container()}
	env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + ns + "-" + name, "CNI_NETNS=" + p.ns.Path, "CNI_IFNAME=eth0",
		"CNI_PATH=" + k.bin, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name}
	r := n.SB.Exec(filepath.Join(k.bin, "pier"), env, []byte(n.Conflist))
	p.addr, p.result = addedAddr(t, pod, r), r.Stdout
	k.pods[pod] = p
	return p
}

// reportAddr writes the pod's address into its status, as kubelet does
// after the sandbox is up.
func (k *kubeNP) reportAddr(p *npPod) {
	ns, name, _ := strings.Cut(p.name, "/")
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.api.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Phase = corev1.PodRunning
		cur.Status.PodIP, cur.Status.PodIPs = p.addr.String(), []corev1.PodIP{{IP: p.addr.String()}}
		_, err = k.api.CoreV1().Pods(ns).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		k.t.Fatal(err)
	}
}

// Apply writes a policy (created, or its spec replaced), a pod's labels or
// a namespace's labels through the API.
func (k *kubeNP) Apply(obj any) error {
	ctx := context.Background()
	switch o := obj.(type) {
	case *networkingv1.NetworkPolicy:
		pols := k.api.NetworkingV1().NetworkPolicies(o.Namespace)
		_, err := pols.Create(ctx, o, metav1.CreateOptions{})
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := pols.Get(ctx, o.Name, metav1.GetOptions{})
			if err == nil {
				cur.Spec = o.Spec
				_, err = pols.Update(ctx, cur, metav1.UpdateOptions{})
			}
			return err
		})
	case *corev1.Pod:
		pods := k.api.CoreV1().Pods(o.Namespace)
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := pods.Get(ctx, o.Name, metav1.GetOptions{})
			if err == nil {
				cur.Labels = o.Labels
				_, err = pods.Update(ctx, cur, metav1.UpdateOptions{})
			}
			return err
		})
	case *corev1.Namespace:
		nss := k.api.CoreV1().Namespaces()
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := nss.Get(ctx, o.Name, metav1.GetOptions{})
			if err == nil {
				cur.Labels = o.Labels
				_, err = nss.Update(ctx, cur, metav1.UpdateOptions{})
			}
			return err
		})
	}
	return fmt.Errorf("cannot apply %T", obj)
}

func (k *kubeNP) DeletePolicy(ns, name string) error {
	err := k.api.NetworkingV1().NetworkPolicies(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// Probe waits until both pierds have installed what the matrix expects
// (the API's writes reach them asynchronously), reading the installed
// rules as `pierctl policy explain` does, then sends the traffic. The
// wait's deadline only bounds a broken run: when it passes, the traffic
// is probed all the same and its mismatches reported.
func (k *kubeNP) Probe(t testing.TB, m *netpoltest.Matrix) *netpoltest.Result {
	deadline := time.Now().Add(30 * time.Second)
	for {
		bad := explainHarness{k.npCluster}.Probe(t, m).Mismatches()
		if len(bad) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the installed rules never gave the expected matrix: %v", bad)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return k.npCluster.Probe(t, m)
}

// TestKubeNetworkPolicyMatrix runs every scenario of the upstream-style
// suite through the API server: pierd on each node turns the objects it
// watches into its table, and the probe matrices of real traffic (pairs
// on one node and across the two) match the API's semantics.
func TestKubeNetworkPolicyMatrix(t *testing.T) {
	k := newKubeNP(t)
	for _, sc := range netpoltest.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			k.t = t
			netpoltest.Run(t, k, sc)
		})
	}
}

// TestKubeNetworkPolicyAfterFlush checks pierd's part around the engine:
// at start it turns bridge netfilter on (it was off in node1: policies
// would not see traffic between pods of one node), and after `nft flush
// ruleset` on a node its netfilter watcher puts the pods' policy elements
// back from their records (leading to np-unclassified, which drops) and
// runs the engine's resync, which it registered: the chains come back and
// the elements move to them, with no event from the API. x/a admits only
// x/b: before the flush and after the repair, x/b (same node, bridged)
// gets in and y/c (other node) does not; x/b getting in again shows the
// resync ran, since the records alone leave x/a cut off.
func TestKubeNetworkPolicyAfterFlush(t *testing.T) {
	k := newKubeNodes(t, func(n *kubetest.Node) {
		if n.Index == 1 {
			n.SB.Node.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
		}
	})
	if got := strings.TrimSpace(k.env.Nodes[0].SB.Node.MustRun(t, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables")); got != "1" {
		t.Errorf("pierd --network-policy left bridge-nf-call-iptables at %s", got)
	}
	for _, ns := range []string{"x", "y"} {
		k.mustCreateNS(ns, nil)
	}
	a, b, c := k.startPod("x/a", 1, nil), k.startPod("x/b", 1, nil), k.startPod("y/c", 2, nil)
	startEcho(t, a.ns, "tcp/:80")
	if err := k.Apply(netpoltest.In(netpoltest.Policy("x", "a-from-b", netpoltest.Sel("pod", "a")),
		netpoltest.Peers(netpoltest.PodPeer(netpoltest.Sel("pod", "b"))))); err != nil {
		t.Fatal(err)
	}
	// Both at once: right after the flush everything passes (no table),
	// and after the records' restore alone nothing does.
	want := func(when string) {
		t.Helper()
		k.eventually(when+": y/c -> x/a denied and x/b -> x/a allowed", func() bool {
			return !k.probeOne(c.ns, "tcp", a.addr, 80) && k.probeOne(b.ns, "tcp", a.addr, 80)
		})
	}
	want("before the flush")
	k.env.Nodes[0].SB.Node.MustRun(t, "nft", "flush", "ruleset")
	want("after the flush")
	if out := k.env.Nodes[0].SB.Node.MustRun(t, "nft", "list", "chain", "inet", "pier", "np-pod-x/a-in"); !strings.Contains(out, "jump np-pol-x/a-from-b-in") {
		t.Errorf("x/a's chain after the repair:\n%s", out)
	}
}

// eventually polls cond until it holds; the deadline bounds a broken run
// (pierd's logs then say why), it asserts no duration.
func (k *kubeNP) eventually(what string, cond func() bool) {
	k.t.Helper()
	logs := func() string {
		var b strings.Builder
		for _, n := range k.env.Nodes {
			fmt.Fprintf(&b, "pierd on %s:\n%s\n", n.Name, kubetest.Tail(n.Log(), 4000))
		}
		return b.String()
	}
	kubetest.Poll(k.t, 30*time.Second, what, cond, logs)
}
