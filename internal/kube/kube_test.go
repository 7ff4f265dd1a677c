package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/nodestatus"
	"github.com/pier-cni/pier/internal/routing"
	"github.com/pier-cni/pier/internal/testnet"
)

// recorder is a DataPlane that keeps the last State.
type recorder struct {
	mu   sync.Mutex
	last routing.State
	n    int
}

func (r *recorder) Apply(s routing.State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.n = s, r.n+1
	return nil
}

func (r *recorder) routes() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for _, rt := range r.last.Routes {
		out[rt.Dst.String()] = rt.Via.String()
	}
	return out
}

func waitFor(t *testing.T, what string, d time.Duration, f func() bool) {
	t.Helper()
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if f() {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// startAPI starts an API server with the namespace of the pod range
// claims, which the manifest creates.
func startAPI(t *testing.T) *kubetest.APIServer {
	t.Helper()
	testnet.RequireRoot(t)
	api := kubetest.Start(t, kubetest.Options{NS: testnet.NewNS(t, "pt-api-")})
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ClaimNamespace}}
	if _, err := api.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return api
}

// createNode creates a Node with pod ranges (none when cidrs is empty) and
// InternalIPs, the way kubelet and the controller manager would leave it.
func createNode(t *testing.T, cs kubernetes.Interface, name string, cidrs []string, ips ...string) *corev1.Node {
	t.Helper()
	ctx := context.Background()
	n, err := cs.CoreV1().Nodes().Create(ctx, nodeObj(name, cidrs), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return setAddresses(t, cs, n, ips...)
}

func setAddresses(t *testing.T, cs kubernetes.Interface, n *corev1.Node, ips ...string) *corev1.Node {
	t.Helper()
	n.Status.Addresses = nil
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	n, err := cs.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDatastore runs the Kubernetes mode in-process against a real API
// server, with a recording data plane: the node's range is claimed and
// written into its Node and the conflist; the other nodes are routed, a
// deleted node is not any more, a changed InternalIP and a new node are
// followed; the status file says all of it.
func TestDatastore(t *testing.T) {
	api := startAPI(t)
	cs := api.Client
	createNode(t, cs, "n1", nil, "192.0.2.1")
	createNode(t, cs, "n2", []string{"10.244.0.0/24", "fd00:10:244::/64"}, "192.0.2.2", "fd00:192::2")
	createNode(t, cs, "n3", []string{"10.244.7.0/24"}, "192.0.2.3")
	dir := t.TempDir()
	rec := &recorder{}
	d, err := New(Options{
		Config: api.RESTConfig("admin"), NodeName: "n1", Mode: routing.ModeHostGW, DataPlane: rec,
		ClusterCIDRs: prefixes("10.244.0.0/16", "fd00:10:244::/56"),
		Allocator:    &Allocator{ClusterCIDRs: prefixes("10.244.0.0/16", "fd00:10:244::/56")},
		CNI:          CNIConfig{Dir: dir, IPMasq: true, NonMasquerade: prefixes("10.244.0.0/16", "fd00:10:244::/56"), DataDir: filepath.Join(dir, "data")},
		StatusFile:   filepath.Join(dir, "node.json"),
		Log:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { d.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	// The lowest free ranges: 10.244.0.0/24 and fd00:10:244::/64 are n2's.
	conflist := filepath.Join(dir, DefaultCNIFile)
	waitFor(t, "the conflist", 20*time.Second, func() bool { _, err := os.Stat(conflist); return err == nil })
	var cl struct {
		Plugins []struct {
			NonMasq []string        `json:"nonMasqueradeCIDRs"`
			Caps    map[string]bool `json:"capabilities"`
			IPAM    struct {
				Ranges [][]struct{ Subnet string } `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	b, _ := os.ReadFile(conflist)
	if err := json.Unmarshal(b, &cl); err != nil || len(cl.Plugins) != 1 {
		t.Fatalf("conflist: %v\n%s", err, b)
	}
	p := cl.Plugins[0]
	if len(p.IPAM.Ranges) != 2 || p.IPAM.Ranges[0][0].Subnet != "10.244.1.0/24" || p.IPAM.Ranges[1][0].Subnet != "fd00:10:244:1::/64" ||
		!p.Caps["portMappings"] || !p.Caps["bandwidth"] || len(p.NonMasq) != 2 {
		t.Fatalf("conflist:\n%s", b)
	}
	n1, err := cs.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil || !slices.Equal(n1.Spec.PodCIDRs, []string{"10.244.1.0/24", "fd00:10:244:1::/64"}) {
		t.Fatalf("n1's spec.podCIDRs: %v %v", n1.Spec.PodCIDRs, err)
	}

	waitFor(t, "routes to n2 and n3", 10*time.Second, func() bool {
		r := rec.routes()
		return r["10.244.0.0/24"] == "192.0.2.2" && r["fd00:10:244::/64"] == "fd00:192::2" && r["10.244.7.0/24"] == "192.0.2.3"
	})
	start := time.Now()
	if err := cs.CoreV1().Nodes().Delete(ctx, "n3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n3's route to go", 5*time.Second, func() bool { _, ok := rec.routes()["10.244.7.0/24"]; return !ok })
	t.Logf("MEASURE deleted Node unrouted (in-process, data plane recorded) after %v", time.Since(start))
	n2, _ := cs.CoreV1().Nodes().Get(ctx, "n2", metav1.GetOptions{})
	setAddresses(t, cs, n2, "192.0.2.22", "fd00:192::2")
	createNode(t, cs, "n4", []string{"10.244.9.0/24"}, "192.0.2.4")
	waitFor(t, "n2's new next hop and n4", 5*time.Second, func() bool {
		r := rec.routes()
		return r["10.244.0.0/24"] == "192.0.2.22" && r["10.244.9.0/24"] == "192.0.2.4"
	})
	waitFor(t, "the status file", 5*time.Second, func() bool {
		s, err := nodestatus.Read(filepath.Join(dir, "node.json"))
		return err == nil && len(s.Routes) == 3 && len(s.PodCIDRs) == 2 && s.Nodes == 3 &&
			strings.Contains(s.PodCIDRSource, "assigned by pierd") && s.Datastore == "kubernetes"
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestAllocateConcurrent: pierds of many nodes claim ranges at once:
// every node gets a range of each family, no two overlap, and none
// overlaps a range a node already held; a second Assign returns the same;
// a node re-created under its name takes its claim back.
func TestAllocateConcurrent(t *testing.T) {
	api := startAPI(t)
	cs := api.Client
	createNode(t, cs, "held", []string{"10.245.0.0/23"}, "192.0.2.100") // set by hand, bigger
	const nodes = 12
	for i := range nodes {
		createNode(t, cs, fmt.Sprintf("c%d", i), nil, fmt.Sprintf("192.0.2.%d", i+1))
	}
	got := make([][]netip.Prefix, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			// Each with a client of its own, as separate pierds would.
			c, err := NewAPI(api.RESTConfig("admin"))
			if err != nil {
				errs[i] = err
				return
			}
			a := &Allocator{Client: c, ClusterCIDRs: prefixes("10.245.0.0/16", "fd00:10:245::/48")}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			got[i], errs[i] = a.Assign(ctx, fmt.Sprintf("c%d", i))
		})
	}
	wg.Wait()
	var all []netip.Prefix
	for i := range nodes {
		if errs[i] != nil || len(got[i]) != 2 {
			t.Fatalf("c%d: %v %v", i, got[i], errs[i])
		}
		for _, p := range got[i] {
			for _, q := range append(all, netip.MustParsePrefix("10.245.0.0/23")) {
				if p.Overlaps(q) {
					t.Fatalf("c%d got %s, overlapping %s", i, p, q)
				}
			}
			all = append(all, p)
		}
	}
	// The ranges are the lowest free ones: no gaps.
	for _, p := range all {
		if p.Addr().Is4() && int(p.Addr().As4()[2]) >= nodes+2 {
			t.Errorf("range %s is not among the lowest free ones", p)
		}
	}
	own, err := NewAPI(api.RESTConfig("admin"))
	if err != nil {
		t.Fatal(err)
	}
	a := &Allocator{Client: own, ClusterCIDRs: prefixes("10.245.0.0/16", "fd00:10:245::/48")}
	ctx := context.Background()
	again, err := a.Assign(ctx, "c0")
	if err != nil || !slices.Equal(again, got[0]) {
		t.Fatalf("second Assign: %v %v, first %v", again, err, got[0])
	}
	// c0 is deleted and registers again (a reinstalled node): same ranges.
	if err := cs.CoreV1().Nodes().Delete(ctx, "c0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	createNode(t, cs, "c0", nil, "192.0.2.1")
	back, err := a.Assign(ctx, "c0")
	if err != nil || !slices.Equal(back, got[0]) {
		t.Fatalf("re-created c0 got %v %v, had %v", back, err, got[0])
	}
	l, err := cs.CoordinationV1().Leases(ClaimNamespace).Get(ctx, claimName(got[0][0]), metav1.GetOptions{})
	n, _ := cs.CoreV1().Nodes().Get(ctx, "c0", metav1.GetOptions{})
	if err != nil || len(l.OwnerReferences) != 1 || l.OwnerReferences[0].UID != n.UID {
		t.Fatalf("c0's claim is not owned by its new Node: %v %+v", err, l.OwnerReferences)
	}
}
