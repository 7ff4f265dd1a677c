package netpol

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	. "github.com/pier-cni/pier/internal/netpol/netpoltest" //nolint:revive // the policy builders read as a DSL
)

// nullDP accepts every change: the benchmarks time the engine alone.
type nullDP struct{}

func (nullDP) Apply(dataplane.Delta) error { return nil }
func (nullDP) Resync(dataplane.State) ([]dataplane.PodChain, error) {
	return nil, nil
}
func (nullDP) RemovePods([]dataplane.PodChain) ([]dataplane.PodChain, error) { return nil, nil }

// benchEngine is an engine with 2,000 pods in 20 namespaces (100 of them
// local) and 500 policies, each selecting one app label and admitting one
// client label of one namespace label.
func benchEngine(b *testing.B) *Engine {
	e := New(Config{NodeName: "n1", DataPlane: nullDP{}})
	for i := range 20 {
		mustNil(b, e.SetNamespace(NamespaceObject(fmt.Sprintf("ns%d", i), map[string]string{"team": fmt.Sprintf("t%d", i%5)})))
	}
	for j := range 2000 {
		node := fmt.Sprintf("n%d", 1+j%20)
		p := PodObject(fmt.Sprintf("ns%d/pod%d", j%20, j), node, netip.AddrFrom4([4]byte{10, byte(j / 250), byte(j % 250), 2}),
			map[string]string{"app": fmt.Sprintf("app%d", j%100), "role": fmt.Sprintf("client%d", j%50)})
		mustNil(b, e.SetPod(p))
	}
	for i := range 500 {
		mustNil(b, e.SetPolicy(In(Policy(fmt.Sprintf("ns%d", i%20), fmt.Sprintf("p%d", i), Sel("app", fmt.Sprintf("app%d", i%100))),
			Peers(BothPeer(Sel("team", fmt.Sprintf("t%d", i%5)), Sel("role", fmt.Sprintf("client%d", i%50)))), Port("TCP", 8000+i%100))))
	}
	mustNil(b, e.Start())
	return e
}

func BenchmarkPodRelabel(b *testing.B) {
	e := benchEngine(b)
	b.ResetTimer()
	for i := range b.N {
		p := PodObject("ns3/pod3", "n4", netip.AddrFrom4([4]byte{10, 0, 3, 2}), map[string]string{"app": "app3", "role": fmt.Sprintf("client%d", i%50)})
		mustNil(b, e.SetPod(p))
	}
}

func BenchmarkLocalPodAdd(b *testing.B) {
	e := benchEngine(b)
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("ns1/new%d", i)
		mustNil(b, e.SetPod(PodObject(name, "n1", netip.Addr{}, map[string]string{"app": "app1"})))
		mustNil(b, e.DeletePod("ns1", fmt.Sprintf("new%d", i)))
	}
}

func BenchmarkPolicyUpdate(b *testing.B) {
	e := benchEngine(b)
	b.ResetTimer()
	for i := range b.N {
		mustNil(b, e.SetPolicy(In(Policy("ns1", "p1", Sel("app", "app1")),
			Peers(BothPeer(Sel("team", "t1"), Sel("role", fmt.Sprintf("client%d", i%50)))), Port("TCP", 8001))))
	}
}
