package netpol

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
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

// TestOneOwnerPerAddress: of the pods reporting one address, one holds it
// — the one not being deleted, else the newest — whatever order their
// events come in, and only its labels, named ports and chains count: in
// the selector sets, the named-port sets, and the pointers a resync
// writes. The engine's incremental state ends equal to a resync of it.
func TestOneOwnerPerAddress(t *testing.T) {
	now := metav1.Now()
	older := metav1.NewTime(now.Add(-time.Hour))
	pod := func(name, app, port string, created metav1.Time, deleting bool) *corev1.Pod {
		p := PodObject(name, "n1", ip1, map[string]string{"app": app})
		p.CreationTimestamp = created
		if deleting {
			p.DeletionTimestamp = &now
		}
		if port != "" {
			p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: port, ContainerPort: 5432}}}}
		}
		return p
	}
	cases := map[string]struct {
		pods  []*corev1.Pod
		owner string
	}{
		"the one not being deleted": {[]*corev1.Pod{pod("x/db-old", "db", "pg", now, true), pod("x/web-new", "web", "", older, false)}, "web-new"},
		"the newest":                {[]*corev1.Pod{pod("x/db-old", "db", "pg", older, false), pod("x/web-new", "web", "", now, false)}, "web-new"},
		"the newest, either order":  {[]*corev1.Pod{pod("x/web-new", "web", "", now, false), pod("x/db-old", "db", "pg", older, false)}, "web-new"},
		"the other way round":       {[]*corev1.Pod{pod("x/web-old", "web", "", older, false), pod("x/db-new", "db", "pg", now, false)}, "db-new"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e, dp := newEngine(t, "n1")
			mustNil(t, e.SetPolicy(In(Policy("x", "db-from-db", Sel("app", "db")), Peers(PodPeer(Sel("app", "db"))))))
			mustNil(t, e.SetPolicy(In(Policy("x", "to-pg", Sel("app", "pg-clients")), nil, Named(corev1.ProtocolTCP, "pg"))))
			mustNil(t, e.SetPod(PodObject("x/server", "n1", ip2, map[string]string{"app": "db"})))
			for _, p := range tc.pods {
				mustNil(t, e.SetPod(p))
			}
			server := dataplane.Ref{Namespace: "x", Name: "server"}
			dbOwns := tc.owner == "db-new"
			if got := dp.allows(server, dataplane.Ingress, ip1, ip2, dataplane.TCP, 5432); got != dbOwns {
				t.Errorf("x/server admits %s (held by x/%s): %v, want %v\n%s", ip1, tc.owner, got, dbOwns, dp.dump())
			}
			ports := dp.sets[dataplane.PortSetName("pg")]
			if _, in := ports[memberKey(dataplane.Member{Addr: ip1, Proto: dataplane.TCP, Port: 5432})]; in != dbOwns {
				t.Errorf("port set pg holds %s: %v, want %v (held by x/%s)", ip1, in, dbOwns, tc.owner)
			}
			if ref := dp.pointers[ip1]; ref.Name != tc.owner {
				t.Errorf("%s points at %s, want x/%s", ip1, ref, tc.owner)
			}
			incremental := dp.dump()
			mustNil(t, e.Resync())
			if got := dp.dump(); got != incremental {
				t.Errorf("a resync differs from the deltas:\n%s\nresync:\n%s", incremental, got)
			}
			if ref := dp.pointers[ip1]; ref.Name != tc.owner {
				t.Errorf("after a resync %s points at %s, want x/%s", ip1, ref, tc.owner)
			}
		})
	}
}
