package netpol

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/netpol/netpoltest"
)

// modelCluster is two nodes, each an engine over an in-memory data plane,
// fed the same objects; after every change it checks that each node's
// incrementally kept data plane equals a resync of its engine's state.
type modelCluster struct {
	t       *testing.T
	engines [2]*Engine
	dps     [2]*memDP
	addrs   map[string]netip.Addr
}

func newModelCluster(t *testing.T) *modelCluster {
	c := &modelCluster{t: t, addrs: map[string]netip.Addr{}}
	for i := range 2 {
		c.dps[i] = newMemDP()
		c.engines[i] = New(Config{NodeName: fmt.Sprintf("node%d", i+1), DataPlane: c.dps[i]})
	}
	n := [3]int{}
	for _, pod := range netpoltest.PodNames {
		node := netpoltest.NodeOf(pod)
		n[node]++
		c.addrs[pod] = netip.AddrFrom4([4]byte{10, 244, byte(node), byte(1 + n[node])})
	}
	for _, ns := range netpoltest.NamespaceNames {
		c.must(c.Apply(netpoltest.NamespaceObject(ns, nil)))
	}
	for _, pod := range netpoltest.PodNames {
		c.must(c.Apply(netpoltest.PodOn(pod, c.addrs[pod], nil)))
	}
	for _, e := range c.engines {
		c.must(e.Start())
	}
	return c
}

func (c *modelCluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

func (c *modelCluster) Addr(pod string) netip.Addr { return c.addrs[pod] }

func (c *modelCluster) NodeCIDR(node int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(node), 0}), 24)
}

func (c *modelCluster) Apply(obj any) error {
	for _, e := range c.engines {
		var err error
		switch o := obj.(type) {
		case *networkingv1.NetworkPolicy:
			err = e.SetPolicy(o)
		case *corev1.Pod:
			err = e.SetPod(o)
		case *corev1.Namespace:
			err = e.SetNamespace(o)
		default:
			err = fmt.Errorf("cannot apply %T", obj)
		}
		if err != nil {
			return err
		}
	}
	c.checkDeltas()
	return nil
}

func (c *modelCluster) DeletePolicy(ns, name string) error {
	for _, e := range c.engines {
		if err := e.DeletePolicy(ns, name); err != nil {
			return err
		}
	}
	c.checkDeltas()
	return nil
}

// checkDeltas compares each node's data plane, kept by deltas, with a
// resync of the same engine's state.
func (c *modelCluster) checkDeltas() {
	c.t.Helper()
	for i, e := range c.engines {
		if !e.started {
			continue
		}
		fresh := newMemDP()
		e.mu.Lock()
		_, err := fresh.Resync(e.state())
		e.mu.Unlock()
		if err != nil {
			c.t.Fatalf("node%d: resync of the state: %v", i+1, err)
		}
		if got, want := c.dps[i].dump(), fresh.dump(); got != want {
			c.t.Fatalf("node%d: the data plane kept by deltas differs from a resync:\n--- deltas\n%s--- resync\n%s", i+1, got, want)
		}
	}
}

var probeProtos = map[string]uint8{"tcp": dataplane.TCP, "udp": dataplane.UDP}

// Probe evaluates each cell as the two nodes' chains would: egress on the
// client's node, ingress on the server's.
func (c *modelCluster) Probe(_ testing.TB, m *netpoltest.Matrix) *netpoltest.Result {
	r := netpoltest.NewResult(m)
	for _, from := range m.Pods {
		for _, to := range m.Pods {
			if from == to {
				continue
			}
			src, dst := c.addrs[from], c.addrs[to]
			for _, p := range m.Probes {
				proto, port := probeProtos[p.Proto], uint16(p.Port)
				out := c.dps[netpoltest.NodeOf(from)-1].allows(ref(from), dataplane.Egress, dst, dst, proto, port)
				in := c.dps[netpoltest.NodeOf(to)-1].allows(ref(to), dataplane.Ingress, src, dst, proto, port)
				r.Record(from, to, p, out && in)
			}
		}
	}
	return r
}

func ref(pod string) dataplane.Ref {
	ns, name, _ := strings.Cut(pod, "/")
	return dataplane.Ref{Namespace: ns, Name: name}
}

// TestScenarios runs the upstream-style probe matrices against the
// engine with an in-memory data plane: what the compiler and the engine
// decide, and that each event's delta equals a full rewrite.
func TestScenarios(t *testing.T) {
	for _, sc := range netpoltest.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			netpoltest.Run(t, newModelCluster(t), sc)
		})
	}
}

// TestScenariosInOneCluster runs them all in one cluster, one after the
// other, so that what one scenario leaves behind (sets, chains, reference
// counts) is checked by the next.
func TestScenariosInOneCluster(t *testing.T) {
	c := newModelCluster(t)
	for _, sc := range netpoltest.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			c.t = t
			netpoltest.Run(t, c, sc)
		})
	}
	c.t = t
	for i, dp := range c.dps {
		if len(dp.policies) != 0 || len(dp.sets) != 0 {
			t.Errorf("node%d keeps policy objects after every policy was deleted:\n%s", i+1, dp.dump())
		}
	}
}
