package netpol

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	. "github.com/pier-cni/pier/internal/netpol/netpoltest" //nolint:revive // the policy builders read as a DSL
)

// TestReusedAddressGetsNoOldPeerRights guards policies against an address
// that moves from a terminating pod to a new one. A deleted pod stays in
// the API, phase Running with a deletionTimestamp, until its kubelet has
// stopped it and reported back; its sandbox (and with it, through the
// plugin's DEL, its address) can be gone before that, and the address
// handed to a new pod, which reports it. Two pods of one node can share
// an address only that way: the one still holding it is the one that is
// not terminating. The engine puts the address into every set any of the
// two matches, so the new pod (app=web) is admitted where only the old
// one (app=db) was, until the old Pod object is gone.
func TestReusedAddressGetsNoOldPeerRights(t *testing.T) {
	e, dp := newEngine(t, "n1")
	mustNil(t, e.SetPolicy(In(Policy("x", "db-from-db", Sel("app", "db")), Peers(PodPeer(Sel("app", "db"))))))
	mustNil(t, e.SetPod(PodObject("x/server", "n1", ip2, map[string]string{"app": "db"})))
	old := PodObject("x/db-old", "n2", ip1, map[string]string{"app": "db"})
	mustNil(t, e.SetPod(old))
	terminating := old.DeepCopy()
	now := metav1.Now()
	terminating.DeletionTimestamp = &now
	mustNil(t, e.SetPod(terminating))
	mustNil(t, e.SetPod(PodObject("x/web-new", "n2", ip1, map[string]string{"app": "web"})))
	server := dataplane.Ref{Namespace: "x", Name: "server"}
	if dp.allows(server, dataplane.Ingress, ip1, ip2, dataplane.TCP, 5432) {
		t.Errorf("x/web-new (app=web), holding the address of the terminating x/db-old, is admitted by x/server, which admits app=db only: %s", dp.dump())
	}
}
