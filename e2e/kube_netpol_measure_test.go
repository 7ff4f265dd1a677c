package e2e

// Network policy measurements through a real kube-apiserver
// (PIER_MEASURE=1, reported, never asserted), for docs/networkpolicy.md:
// policy created → enforced on both nodes; pod start (the ADD, and the
// Pod object's creation → its chains) with 0 and 500 policies; iperf3
// between two allowed pods with 500 policies and with none; nftables
// objects per policy and per pod. Two nodes of kubetest.Env with pierd
// --network-policy, 1,000 pods of other nodes as Pod objects with
// addresses (in the selector sets on both nodes).

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/netpol/netpoltest"
	"github.com/pier-cni/pier/internal/testnet"
)

func TestKubeNetworkPolicyMeasure(t *testing.T) {
	if os.Getenv("PIER_MEASURE") == "" {
		t.Skip("measurements: set PIER_MEASURE=1")
	}
	report := func(format string, a ...any) { fmt.Printf("kube netpol measure: "+format+"\n", a...) }
	k := newKubeNodes(t, nil)
	k.benchObjects()
	node1 := k.nodes[0]
	var base, full, withPods nftCounts
	// Pod start with 0 and with 500 policies in the cluster, in seven
	// rounds of 10 pods taking turns (0, 500, 0, …, 0), so that the
	// machine's drift hits both alike.
	var podStart, classify [2][]time.Duration // by policies present
	for r := range 7 {
		on := r % 2
		if on == 1 {
			before := node1.counts(t)
			start := time.Now()
			k.benchPolicies(true)
			report("%d policies created through the API and on both nodes in %s", benchPolicies, time.Since(start).Round(time.Millisecond))
			if r == 1 {
				base, full = before, node1.counts(t)
				report("pierd resident memory with --network-policy, 1,000 remote and 10 local Pod objects, 16 namespaces, 500 policies: %s", vmRSS(t, k.env.Nodes[0].PID()))
			}
		}
		for j := range 10 {
			name := fmt.Sprintf("bench/start-%d-%d", r, j)
			took, seen := k.timedPodStart(name, 1+j%2, map[string]string{"app": fmt.Sprintf("svc-%d", j)})
			podStart[on], classify[on] = append(podStart[on], took), append(classify[on], seen)
		}
		if r == 1 {
			withPods = node1.counts(t)
		}
		if on == 1 {
			k.benchPolicies(false)
		}
	}
	report("pod start, ADD as a process (median of 40 with 0 policies, of 30 with 500, rounds taking turns, nodes alternating): 0 policies %s, 500 policies %s (%.2fx)",
		median(podStart[0]), median(podStart[1]), ratio(podStart[1], podStart[0]))
	for on, what := range []string{"no policy", "500 policies"} {
		v := slices.Clone(podStart[on])
		slices.Sort(v)
		report("ADDs with %s, 10th/25th/75th/90th percentile: %s %s %s %s", what, v[len(v)/10], v[len(v)/4], v[3*len(v)/4], v[9*len(v)/10])
	}
	report("pod start, Pod object created -> its chains on its node (median): 0 policies %s, 500 policies %s",
		median(classify[0]), median(classify[1]))

	k.measureEnforceAPI(report)
	k.iperfAPI(t, report)
	report("table inet pier on node1 with no policy (1,000 remote pods, 5 local): %s", base)
	report("with %d policies: %s; per policy %.1f chains, %.1f rules, %.2f sets, %.1f elements", benchPolicies, full,
		float64(full.chains-base.chains)/benchPolicies, float64(full.rules-base.rules)/benchPolicies,
		float64(full.sets-base.sets)/benchPolicies, float64(full.elements-base.elements)/benchPolicies)
	report("per local pod selected by one policy (5 pods on node1): %.1f chains, %.1f rules, %.1f elements",
		float64(withPods.chains-full.chains)/5, float64(withPods.rules-full.rules)/5, float64(withPods.elements-full.elements)/5)
}

// benchObjects creates the namespaces of the bench policies and 1,000
// pods of other nodes, with addresses, through the API.
func (k *kubeNP) benchObjects() {
	t, ctx := k.t, context.Background()
	for i := range 10 {
		k.mustCreateNS(fmt.Sprintf("t-%d", i), map[string]string{"team": fmt.Sprintf("t-%d", i)})
	}
	k.mustCreateNS("bench", map[string]string{"team": "bench"})
	for j := range 1000 {
		p := netpoltest.PodObject(fmt.Sprintf("t-%d/remote-%d", j%10, j), fmt.Sprintf("node-r%d", j%20), netip.Addr{},
			map[string]string{"app": fmt.Sprintf("client-%d", j%50)})
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9090})
		created, err := k.api.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		addr := netip.AddrFrom4([4]byte{10, 245, byte(j / 250), byte(1 + j%250)}).String()
		created.Status.Phase, created.Status.PodIP, created.Status.PodIPs = corev1.PodRunning, addr, []corev1.PodIP{{IP: addr}}
		if _, err := k.api.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// timedPodStart creates a pod through the API and reports how long pierd
// took to make its chains and how long its ADD took.
func (k *kubeNP) timedPodStart(pod string, node int, labels map[string]string) (add, classified time.Duration) {
	t := k.t
	obj := netpoltest.PodObject(pod, fmt.Sprintf("node%d", node), netip.Addr{}, labels)
	n := k.nodes[node-1]
	chain := dataplane.PodChainName(dataplane.Ref{Namespace: obj.Namespace, Name: obj.Name}, dataplane.Ingress)
	start := time.Now()
	if _, err := k.api.CoreV1().Pods(obj.Namespace).Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.eventually("the chains of "+pod, func() bool { return n.chainJumps(t, chain, "") })
	classified = time.Since(start)
	// Both pierds handle the new pod (with 500 policies, against every
	// policy of its namespace and every selector set) on the same two
	// cores the ADD runs on: let them finish, as they would while kubelet
	// makes the sandbox, so that the figure is the ADD's own.
	time.Sleep(100 * time.Millisecond)
	start = time.Now()
	p := k.attachKube(pod, node)
	add = time.Since(start)
	k.reportAddr(p)
	return add, classified
}

// chainJumps reports whether chain exists in the node's table inet pier
// and, unless to is "", jumps to chain to.
func (n *npNode) chainJumps(t testing.TB, chain, to string) bool {
	conn, err := nftables.New(nftables.WithNetNSFd(n.fd), nftables.AsLasting())
	if err != nil {
		t.Errorf("nftables socket in %s: %v", n.name, err)
		return false
	}
	defer conn.CloseLasting()
	rules, err := conn.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableName}, &nftables.Chain{Name: chain})
	if err != nil {
		return false // no such chain (yet)
	}
	if to == "" {
		return true
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump && v.Chain == to {
				return true
			}
		}
	}
	return false
}

// benchPolicies creates (or deletes) the 500 bench policies through the
// API and waits until both nodes have their chains (or none).
func (k *kubeNP) benchPolicies(create bool) {
	t, ctx := k.t, context.Background()
	for i := range benchPolicies {
		var err error
		if create {
			_, err = k.api.NetworkingV1().NetworkPolicies("bench").Create(ctx, benchPolicy(i), metav1.CreateOptions{})
		} else {
			err = k.api.NetworkingV1().NetworkPolicies("bench").Delete(ctx, benchPolicy(i).Name, metav1.DeleteOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every policy has its ingress chain on every node, every 5th an
	// egress one too: wait until all are there (or gone) on both nodes, so
	// that what follows does not share the kernel with pierd's backlog.
	want := 0
	if create {
		want = benchPolicies + benchPolicies/5
	}
	for _, n := range k.nodes {
		k.eventually(fmt.Sprintf("%d bench policy chains on %s", want, n.name), func() bool {
			return n.countChains(t, "np-pol-bench/p") == want
		})
	}
}

// countChains counts the chains of the node's table inet pier whose name
// starts with prefix.
func (n *npNode) countChains(t testing.TB, prefix string) int {
	conn, err := nftables.New(nftables.WithNetNSFd(n.fd), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, ch := range chains {
		if ch.Table.Name == dataplane.TableName && strings.HasPrefix(ch.Name, prefix) {
			c++
		}
	}
	return c
}

// measureEnforceAPI times policy creation through the API → both nodes'
// tables enforcing it: a policy selecting app=shared, which one pod on
// each node carries, until both pods' chains jump to it.
func (k *kubeNP) measureEnforceAPI(report func(string, ...any)) {
	t := k.t
	var pods [2]string
	for i := range pods {
		pods[i] = fmt.Sprintf("bench/shared-%d", i+1)
		k.startPod(pods[i], i+1, map[string]string{"app": "shared"})
	}
	var took []time.Duration
	for i := range 20 {
		np := netpoltest.In(netpoltest.Policy("bench", fmt.Sprintf("shared-%d", i), netpoltest.Sel("app", "shared")),
			netpoltest.Peers(netpoltest.NSPeer(netpoltest.Sel("team", "t-1"))), netpoltest.Port(corev1.ProtocolTCP, 7000+i))
		to := dataplane.PolicyChainName(dataplane.Ref{Namespace: "bench", Name: np.Name}, dataplane.Ingress)
		start := time.Now()
		if _, err := k.api.NetworkingV1().NetworkPolicies("bench").Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for j, pod := range pods {
			chain := dataplane.PodChainName(dataplane.Ref{Namespace: "bench", Name: pod[len("bench/"):]}, dataplane.Ingress)
			wg.Go(func() {
				for end := time.Now().Add(30 * time.Second); !k.nodes[j].chainJumps(t, chain, to); time.Sleep(time.Millisecond) {
					if time.Now().After(end) {
						t.Errorf("policy %s never enforced on node%d", np.Name, j+1)
						return
					}
				}
			})
		}
		wg.Wait()
		took = append(took, time.Since(start))
	}
	report("policy created through the API -> enforced on both nodes: median %s, max %s (20 policies, polling each node's table every ms)",
		median(took), slices.Max(took))
}

// iperfAPI compares throughput between allowed pods with the 500
// policies in the cluster and with none, in alternating rounds: bench/
// iperf-srv (app=svc-0, which policy 0 selects, admitting app=client-0 of
// team=t-0 on TCP 8000) on node1, clients on node1 and node2.
func (k *kubeNP) iperfAPI(t *testing.T, report func(string, ...any)) {
	srv := k.startPod("bench/iperf-srv", 1, map[string]string{"app": "svc-0"})
	cli := k.startPod("t-0/iperf-cli", 1, map[string]string{"app": "client-0"})
	remote := k.startPod("t-0/iperf-remote", 2, map[string]string{"app": "client-0"})
	cmd := exec.Command("iperf3", "-s", "-p", "8000")
	if err := testnet.StartIn(srv.ns.Path, cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killWait(cmd) })
	var sameOff, sameOn, crossOff, crossOn []float64
	for range 3 {
		sameOff, crossOff = append(sameOff, iperf3Once(t, cli, srv)), append(crossOff, iperf3Once(t, remote, srv))
		k.benchPolicies(true)
		sameOn, crossOn = append(sameOn, iperf3Once(t, cli, srv)), append(crossOn, iperf3Once(t, remote, srv))
		k.benchPolicies(false)
	}
	med := func(v []float64) string {
		s := slices.Clone(v)
		slices.Sort(s)
		return fmt.Sprintf("%.1f (%.1f-%.1f)", s[len(s)/2], s[0], s[len(s)-1])
	}
	report("iperf3 Gbit/s, median (range) of 3 alternating rounds: same node, no policy %s, %d policies %s; across nodes, no policy %s, with %s",
		med(sameOff), benchPolicies, med(sameOn), med(crossOff), med(crossOn))
}

// vmRSS is a process's resident set, as /proc says.
func vmRSS(t *testing.T, pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
