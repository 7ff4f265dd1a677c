package netpol

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	. "github.com/pier-cni/pier/internal/netpol/netpoltest" //nolint:revive // the policy builders read as a DSL
)

// lockedDP is the strict in-memory data plane behind a lock: informers
// call the engine from their own goroutines, the test reads beside them.
type lockedDP struct {
	mu sync.Mutex
	*memDP
}

func (l *lockedDP) Apply(d dataplane.Delta) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.memDP.Apply(d)
}

func (l *lockedDP) Resync(s dataplane.State) ([]dataplane.PodChain, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.memDP.Resync(s)
}

func (l *lockedDP) RemovePods(p []dataplane.PodChain) ([]dataplane.PodChain, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.memDP.RemovePods(p)
}

// waitFor polls cond (under the data plane's lock) until it holds; the
// deadline only bounds a broken test, it asserts no duration.
func (l *lockedDP) waitFor(t *testing.T, what string, cond func(*memDP) bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		l.mu.Lock()
		ok := cond(l.memDP)
		l.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("never happened: %s", what)
		}
	}
}

// TestWatch drives the engine from informers on a fake API: the objects
// present at start are written at once, and later creations, updates and
// deletions each reach the data plane.
func TestWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewClientset(NamespaceObject("x", nil), PodObject("x/a", "n1", netip.MustParseAddr("10.0.0.2"), nil),
		PodObject("x/b", "n2", netip.MustParseAddr("10.0.1.2"), nil), Policy("x", "deny", nil))
	dp := &lockedDP{memDP: newMemDP()}
	e := New(Config{NodeName: "n1", DataPlane: dp})
	f := informers.NewSharedInformerFactory(cs, 0)
	inf := Informers{Pods: f.Core().V1().Pods().Informer(), Namespaces: f.Core().V1().Namespaces().Informer(),
		Policies: f.Networking().V1().NetworkPolicies().Informer()}
	run, err := Watch(inf, e, slog.New(slog.DiscardHandler), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	dp.waitFor(t, "x/a isolated by x/deny at start", func(d *memDP) bool {
		return d.resyncs == 1 && d.pods["np-pod-x/a-in"].Verdict == dataplane.Isolated
	})
	np := In(Policy("x", "from-b", Sel("pod", "a")), Peers(PodPeer(Sel("pod", "b"))))
	if _, err := cs.NetworkingV1().NetworkPolicies("x").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dp.waitFor(t, "x/from-b written and jumped to", func(d *memDP) bool {
		return len(d.pods["np-pod-x/a-in"].Policies) == 2 && len(d.sets[set("namespace x pods(pod=b)")]) == 1
	})
	b := PodObject("x/b", "n2", netip.MustParseAddr("10.0.1.2"), map[string]string{"pod": "c"})
	b.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := cs.CoreV1().Pods("x").Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	dp.waitFor(t, "x/b relabelled out of the set", func(d *memDP) bool { return len(d.sets[set("namespace x pods(pod=b)")]) == 0 })
	// The informer's cache holds the Pods trimmed.
	cached, ok, err := inf.Pods.GetStore().GetByKey("x/b")
	if err != nil || !ok || cached.(*corev1.Pod).Status.Conditions != nil || cached.(*corev1.Pod).Labels["pod"] != "c" {
		t.Errorf("cached x/b: %+v (found %v, %v), want it trimmed", cached, ok, err)
	}
	if err := cs.CoreV1().Pods("x").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	dp.waitFor(t, "x/a's chains removed", func(d *memDP) bool { _, ok := d.pods["np-pod-x/a-in"]; return !ok })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}
