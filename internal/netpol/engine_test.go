package netpol

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	. "github.com/pier-cni/pier/internal/netpol/netpoltest" //nolint:revive // the policy builders read as a DSL
)

var (
	ip1 = netip.MustParseAddr("10.0.0.2")
	ip2 = netip.MustParseAddr("10.0.0.3")
)

// recordingDP remembers every delta on top of the strict model.
type recordingDP struct {
	*memDP
	deltas []dataplane.Delta
}

func (r *recordingDP) Apply(d dataplane.Delta) error {
	r.deltas = append(r.deltas, d)
	return r.memDP.Apply(d)
}

func newEngine(t *testing.T, node string) (*Engine, *recordingDP) {
	t.Helper()
	dp := &recordingDP{memDP: newMemDP()}
	e := New(Config{NodeName: node, DataPlane: dp})
	mustNil(t, e.Start())
	return e, dp
}

// pointersSince are the pointers of the deltas after the first n.
func (r *recordingDP) pointersSince(n int) []dataplane.Pointer {
	var out []dataplane.Pointer
	for _, d := range r.deltas[n:] {
		out = append(out, d.Pointers...)
	}
	return out
}

// TestLocalPodChainsBeforeAddress: the chains of a pod scheduled to this
// node exist as soon as the engine sees it, before it has an address (the
// plugin's ADD needs them); its address, once reported, is a pointer.
// Pods of other nodes get neither.
func TestLocalPodChainsBeforeAddress(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPod(PodObject("x/a", "n1", netip.Addr{}, nil)))
	if _, ok := dp.pods["np-pod-x/a-in"]; !ok {
		t.Fatalf("no chain for a local pod without address: %s", dp.dump())
	}
	if got := dp.pointersSince(0); len(got) != 0 {
		t.Errorf("pointers without address: %+v", got)
	}
	n := len(dp.deltas)
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, nil)))
	if got := dp.pointersSince(n); len(got) != 1 || got[0].Addr != ip1 {
		t.Errorf("pointers %+v, want %s", got, ip1)
	}
	n = len(dp.deltas)
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, map[string]string{"pod": "a", "v": "2"})))
	if got := dp.pointersSince(n); len(got) != 0 {
		t.Errorf("a relabel repeated the pointer: %+v", got)
	}
	n = len(dp.deltas)
	mustNil(t, e.SetPod(PodObject("x/b", "n2", ip2, nil)))
	if _, ok := dp.pods["np-pod-x/b-in"]; ok || len(dp.pointersSince(n)) != 0 {
		t.Errorf("chain or pointer for another node's pod")
	}
}

// TestPodsThatAreNoPeers: host network pods and finished pods are no
// peers (their address is the node's, or may be another pod's already); a
// finished local pod's chains drop.
func TestPodsThatAreNoPeers(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPolicy(In(Policy("x", "p", nil), Peers(NSPeer(Sel())))))
	host := PodObject("x/h", "n1", ip1, nil)
	host.Spec.HostNetwork = true
	mustNil(t, e.SetPod(host))
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip2, nil)))
	sel := dp.sets[set("namespaces() pods()")]
	if len(sel) != 1 {
		t.Fatalf("set %v: want x/a only, not the host network pod", sel)
	}
	if _, ok := dp.pods["np-pod-x/h-in"]; ok {
		t.Errorf("chain for a host network pod")
	}
	done := PodObject("x/a", "n1", ip2, nil)
	done.Status.Phase = corev1.PodSucceeded
	mustNil(t, e.SetPod(done))
	if len(dp.sets[set("namespaces() pods()")]) != 0 {
		t.Errorf("finished pod still a peer: %v", dp.sets)
	}
	if dp.pods["np-pod-x/a-in"].Verdict != dataplane.Gone {
		t.Errorf("finished local pod's chain: %+v", dp.pods["np-pod-x/a-in"])
	}
}

// TestAddressMovesBetweenPods: an address held by a finished pod and then
// given to a new one stays in the sets the new pod belongs to, whatever
// order the events come in.
func TestAddressMovesBetweenPods(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPolicy(In(Policy("x", "p", nil), Peers(PodPeer(Sel("app", "web"))))))
	web := set("namespace x pods(app=web)")
	mustNil(t, e.SetPod(PodObject("x/old", "n2", ip1, map[string]string{"app": "web"})))
	mustNil(t, e.SetPod(PodObject("x/new", "n2", ip1, map[string]string{"app": "web"})))
	mustNil(t, e.DeletePod("x", "old")) // the deletion arrives after the new pod
	if len(dp.sets[web]) != 1 {
		t.Errorf("address left the set with the old pod: %v", dp.sets[web])
	}
	mustNil(t, e.SetPod(PodObject("x/new", "n2", ip1, map[string]string{"app": "db"})))
	if len(dp.sets[web]) != 0 {
		t.Errorf("address still in the set: %v", dp.sets[web])
	}
}

// TestFailedApplyResyncs: when the kernel refuses a delta (a flushed
// table, say), the engine rewrites everything from memory.
func TestFailedApplyResyncs(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, nil)))
	resyncs := dp.resyncs
	dp.fail = errors.New("no such file or directory")
	mustNil(t, e.SetPolicy(Policy("x", "deny", nil)))
	if dp.resyncs != resyncs+1 {
		t.Fatalf("no resync after a failed apply")
	}
	if dp.pods["np-pod-x/a-in"].Verdict != dataplane.Isolated {
		t.Errorf("the resync lost the event: %s", dp.dump())
	}
}

// TestStaleChainOfRecreatedPodStays: the chain of a deleted pod that an
// element still leads to stays for later removal, but once a pod of the
// same name is back, its chain is no longer removed.
func TestStaleChainOfRecreatedPodStays(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, nil)))
	dp.busy = map[string]bool{"np-pod-x/a-in": true, "np-pod-x/a-eg": true}
	mustNil(t, e.DeletePod("x", "a"))
	if len(e.stale) != 2 {
		t.Fatalf("stale %v, want x/a's two chains", e.stale)
	}
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip2, nil)))
	calls := len(dp.removals)
	dp.busy = nil
	mustNil(t, e.Tick())
	if len(dp.removals) != calls || len(e.stale) != 0 {
		t.Errorf("Tick tried to remove the chains of the recreated x/a: %v", dp.removals[calls:])
	}
	if _, ok := dp.pods["np-pod-x/a-in"]; !ok {
		t.Errorf("the recreated pod lost its chain")
	}
}

// TestUnchangedPolicyWritesNothing: informers deliver every object again
// now and then; an update that changes nothing costs no transaction.
func TestUnchangedPolicyWritesNothing(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, nil)))
	np := In(Policy("x", "p", nil), Peers(PodPeer(Sel("a", "b"))))
	mustNil(t, e.SetPolicy(np))
	n := len(dp.deltas)
	mustNil(t, e.SetPolicy(np.DeepCopy()))
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, nil)))
	if len(dp.deltas) != n {
		t.Errorf("%d deltas for unchanged objects: %+v", len(dp.deltas)-n, dp.deltas[n:])
	}
}

// TestEventsBeforeStart: nothing is written before Start, which writes
// everything at once.
func TestEventsBeforeStart(t *testing.T) {
	dp := newMemDP()
	e := New(Config{NodeName: "n1", DataPlane: dp})
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, nil)))
	mustNil(t, e.SetPolicy(Policy("x", "deny", nil)))
	if dp.applies != 0 || dp.resyncs != 0 {
		t.Fatalf("wrote before Start")
	}
	mustNil(t, e.Start())
	if dp.resyncs != 1 || dp.pods["np-pod-x/a-in"].Verdict != dataplane.Isolated || !slices.Contains(dp.pods["np-pod-x/a-in"].Policies, dataplane.Ref{Namespace: "x", Name: "deny"}) {
		t.Errorf("after Start: %s", dp.dump())
	}
}

// TestGoneAddressesUnpointed: a local pod that goes (or changes address)
// has its old addresses unpointed, so that elements pierd added for it
// after a flushed table do not keep its chain in use.
func TestGoneAddressesUnpointed(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip1, nil)))
	n := len(dp.deltas)
	mustNil(t, e.SetPod(PodObject("x/a", "n1", ip2, nil)))
	d := dp.deltas[n]
	if len(d.Pointers) != 1 || d.Pointers[0].Addr != ip2 || len(d.Unpoint) != 1 || d.Unpoint[0].Addr != ip1 {
		t.Errorf("address change: pointers %+v unpoint %+v", d.Pointers, d.Unpoint)
	}
	n = len(dp.deltas)
	mustNil(t, e.DeletePod("x", "a"))
	if d := dp.deltas[n]; len(d.Unpoint) != 1 || d.Unpoint[0].Addr != ip2 {
		t.Errorf("deletion: unpoint %+v", d.Unpoint)
	}
}
