package netpoltest

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Scenario is a list of steps, each changing objects and then expecting
// a matrix. Every scenario starts from the baseline (no policy, default
// labels) and Run restores it after.
type Scenario struct {
	Name  string
	Steps []Step
}

// Step changes the cluster (Do may be nil) and describes the expected
// reachability by editing an all-allowed matrix of its probes.
type Step struct {
	Name   string
	Do     func(c Cluster) error
	Expect func(c Cluster, m *Matrix)
	Probes []Probe // nil: DefaultProbes
}

// Harness is a cluster that can also probe a matrix.
type Harness interface {
	Cluster
	// Probe tries every cell of m and returns what it saw.
	Probe(t testing.TB, m *Matrix) *Result
}

// Run runs a scenario's steps, reporting each mismatching matrix, and
// restores the baseline.
func Run(t *testing.T, h Harness, sc Scenario) {
	t.Helper()
	rec := &recorder{Harness: h, policies: map[[2]string]bool{}}
	t.Cleanup(func() { rec.reset(t) })
	for i, st := range sc.Steps {
		if st.Do != nil {
			if err := st.Do(rec); err != nil {
				t.Fatalf("step %d (%s): %v", i, st.Name, err)
			}
		}
		if st.Expect == nil {
			continue
		}
		probes := st.Probes
		if probes == nil {
			probes = DefaultProbes
		}
		m := NewMatrix(PodNames, probes)
		st.Expect(rec, m)
		res := h.Probe(t, m)
		if bad := res.Mismatches(); len(bad) > 0 {
			var b strings.Builder
			for _, p := range probes {
				b.WriteString(res.Render(p))
			}
			t.Errorf("step %d (%s): %d cells differ from the expected matrix:\n%v\n%s", i, st.Name, len(bad), bad, b.String())
		}
	}
}

// recorder remembers the policies a scenario created.
type recorder struct {
	Harness
	policies map[[2]string]bool
}

func (r *recorder) Apply(obj any) error {
	if p, ok := obj.(*networkingv1.NetworkPolicy); ok {
		r.policies[[2]string{p.Namespace, p.Name}] = true
	}
	return r.Harness.Apply(obj)
}

func (r *recorder) DeletePolicy(ns, name string) error {
	delete(r.policies, [2]string{ns, name})
	return r.Harness.DeletePolicy(ns, name)
}

func (r *recorder) reset(t *testing.T) {
	for k := range r.policies {
		if err := r.Harness.DeletePolicy(k[0], k[1]); err != nil {
			t.Errorf("reset: delete policy %s/%s: %v", k[0], k[1], err)
		}
	}
	for _, ns := range NamespaceNames {
		if err := r.Harness.Apply(NamespaceObject(ns, nil)); err != nil {
			t.Errorf("reset: namespace %s: %v", ns, err)
		}
	}
	for _, pod := range PodNames {
		if err := r.Harness.Apply(PodOn(pod, r.Addr(pod), nil)); err != nil {
			t.Errorf("reset: pod %s: %v", pod, err)
		}
	}
}

func apply(objs ...any) func(Cluster) error {
	return func(c Cluster) error {
		for _, o := range objs {
			if err := c.Apply(o); err != nil {
				return err
			}
		}
		return nil
	}
}

const (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	both        = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

// Scenarios are the upstream suite's policies, with the matrices the API
// semantics give. Comments say why a cell is what it is.
func Scenarios() []Scenario {
	var out []Scenario
	for _, group := range [][]Scenario{selectorScenarios(), combinedScenarios(), portScenarios(), ipBlockScenarios(), updateScenarios()} {
		out = append(out, group...)
	}
	return out
}

func selectorScenarios() []Scenario {
	return []Scenario{
		{Name: "default-deny-ingress", Steps: []Step{{
			// Every pod of x is selected for ingress and no rule allows
			// anything: nothing reaches x; x still reaches everyone.
			Do: apply(Policy("x", "deny-ingress", nil, ingressOnly...)),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(_, to string, _ Probe) bool { return InNamespace(to, "x") }, false)
			},
		}}},
		{Name: "default-deny-egress", Steps: []Step{{
			Do: apply(Policy("x", "deny-egress", nil, egressOnly...)),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, _ string, _ Probe) bool { return InNamespace(from, "x") }, false)
			},
		}}},
		{Name: "default-deny-all", Steps: []Step{{
			Do: apply(Policy("x", "deny-all", nil, both...)),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, to string, _ Probe) bool { return InNamespace(from, "x") || InNamespace(to, "x") }, false)
			},
		}}},
		{Name: "allow-from-namespace", Steps: []Step{{
			// x/a admits the pods of namespaces labelled ns=y only.
			Do: apply(In(Policy("x", "from-y", Sel("pod", "a")), Peers(NSPeer(Sel("ns", "y"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
				m.Set(func(from, to string, _ Probe) bool { return to == "x/a" && InNamespace(from, "y") }, true)
			},
		}}},
		{Name: "pod-and-namespace-selector", Steps: []Step{{
			// One peer with both selectors: pods labelled pod=b in
			// namespaces labelled ns=y, that is y/b alone.
			Do: apply(In(Policy("x", "from-y-b", Sel("pod", "a")), Peers(BothPeer(Sel("ns", "y"), Sel("pod", "b"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false).Pair("y/b", "x/a", true)
			},
		}}},
		{Name: "pod-or-namespace-selector", Steps: []Step{{
			// Two peers: namespace y, or pod=b of the policy's own
			// namespace (x/b), not z/b.
			Do: apply(In(Policy("x", "from-y-or-b", Sel("pod", "a")), Peers(NSPeer(Sel("ns", "y")), PodPeer(Sel("pod", "b"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
				m.Set(func(from, to string, _ Probe) bool { return to == "x/a" && (InNamespace(from, "y") || from == "x/b") }, true)
			},
		}}},
		{Name: "namespace-selector-match-expressions", Steps: []Step{{
			// NotIn: every namespace but y, x itself included.
			Do: apply(In(Policy("x", "not-from-y", Sel("pod", "a")), Peers(NSPeer(Expr("ns", metav1.LabelSelectorOpNotIn, "y"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, to string, _ Probe) bool { return to == "x/a" && InNamespace(from, "y") }, false)
			},
		}}},
		{Name: "namespace-selector-by-name-label", Steps: []Step{{
			// kubernetes.io/metadata.name, which every namespace carries.
			Do: apply(In(Policy("x", "from-z-by-name", nil, ingressOnly...), Peers(NSPeer(Sel(corev1.LabelMetadataName, "z"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, to string, _ Probe) bool { return InNamespace(to, "x") && !InNamespace(from, "z") }, false)
			},
		}}},
		{Name: "any-pod-of-own-namespace", Steps: []Step{{
			// An empty podSelector peer is every pod of the policy's
			// namespace.
			Do: apply(In(Policy("x", "from-x", nil, ingressOnly...), Peers(PodPeer(&metav1.LabelSelector{})))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, to string, _ Probe) bool { return InNamespace(to, "x") && !InNamespace(from, "x") }, false)
			},
		}}},
	}
}

func combinedScenarios() []Scenario {
	return []Scenario{
		{Name: "stacked-policies", Steps: []Step{{
			// Two policies select x/a: what either allows is allowed.
			Do: apply(In(Policy("x", "from-y", Sel("pod", "a")), Peers(NSPeer(Sel("ns", "y")))),
				In(Policy("x", "from-z-c", Sel("pod", "a")), Peers(BothPeer(Sel("ns", "z"), Sel("pod", "c"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
				m.Set(func(from, to string, _ Probe) bool { return to == "x/a" && (InNamespace(from, "y") || from == "z/c") }, true)
			},
		}}},
		{Name: "allow-all-wins-over-deny", Steps: []Step{{
			// deny-all isolates all of x; an ingress rule {} for x/a
			// admits everyone to it.
			Do: apply(Policy("x", "deny-ingress", nil, ingressOnly...),
				In(Policy("x", "allow-all-a", Sel("pod", "a")), Peers())),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/b", false).Ingress("x/c", false)
			},
		}}},
		{Name: "egress-denied-at-client-even-if-server-allows", Steps: []Step{{
			Do: apply(Policy("x", "a-no-egress", Sel("pod", "a"), egressOnly...),
				In(Policy("y", "b-from-x-a", Sel("pod", "b")), Peers(BothPeer(Sel("ns", "x"), Sel("pod", "a"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Egress("x/a", false)
				m.Ingress("y/b", false) // only x/a may reach it, and x/a may not send
			},
		}}},
		{Name: "egress-to-pod-and-namespace", Steps: []Step{{
			Do: apply(Out(Policy("x", "a-to-y-b", Sel("pod", "a"), egressOnly...), Peers(BothPeer(Sel("ns", "y"), Sel("pod", "b"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Egress("x/a", false).Pair("x/a", "y/b", true)
			},
		}}},
		{Name: "ingress-and-egress-independent", Steps: []Step{{
			// x/a: in from z only, out to y only.
			Do: apply(Out(In(Policy("x", "a-in-z-out-y", Sel("pod", "a"), both...), Peers(NSPeer(Sel("ns", "z")))), Peers(NSPeer(Sel("ns", "y"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false).Egress("x/a", false)
				m.Set(func(from, to string, _ Probe) bool {
					return to == "x/a" && InNamespace(from, "z") || from == "x/a" && InNamespace(to, "y")
				}, true)
			},
		}}},
	}
}

func portScenarios() []Scenario {
	return []Scenario{
		{Name: "port-number", Steps: []Step{{
			// y may reach x/a on TCP 81 only.
			Do: apply(In(Policy("x", "y-on-81", Sel("pod", "a")), Peers(NSPeer(Sel("ns", "y"))), Port(tcp, 81))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
				m.Set(func(from, to string, p Probe) bool { return to == "x/a" && InNamespace(from, "y") && p == TCP81 }, true)
			},
		}}},
		{Name: "named-port", Steps: []Step{{
			// serve-81-tcp is x/a's TCP 81; the UDP 80 probe is denied.
			Do: apply(In(Policy("x", "named-81", Sel("pod", "a")), Peers(), Named(tcp, "serve-81-tcp"))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(_, to string, p Probe) bool { return to == "x/a" && p != TCP81 }, false)
			},
		}}},
		{Name: "named-port-from-namespace", Steps: []Step{{
			Do: apply(In(Policy("x", "named-80-from-y", Sel("pod", "a")), Peers(NSPeer(Sel("ns", "y"))), Named(tcp, "serve-80-tcp"))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
				m.Set(func(from, to string, p Probe) bool { return to == "x/a" && InNamespace(from, "y") && p == TCP80 }, true)
			},
		}}},
		{Name: "named-port-egress", Steps: []Step{{
			// Egress named ports resolve against the destination pods.
			Do: apply(Out(Policy("x", "out-serve-80-udp", Sel("pod", "a"), egressOnly...), Peers(), Named(udp, "serve-80-udp"))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, _ string, p Probe) bool { return from == "x/a" && p != UDP80 }, false)
			},
		}}},
		{Name: "end-port", Steps: []Step{{
			// TCP 80 to 81: both TCP probes pass, UDP does not.
			Do: apply(In(Policy("x", "range-80-81", Sel("pod", "a")), Peers(), Range(tcp, 80, 81))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(_, to string, p Probe) bool { return to == "x/a" && p == UDP80 }, false)
			},
		}, {
			Name: "range that starts at 81",
			Do:   apply(In(Policy("x", "range-80-81", Sel("pod", "a")), Peers(), Range(tcp, 81, 90))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(_, to string, p Probe) bool { return to == "x/a" && p != TCP81 }, false)
			},
		}}},
		{Name: "protocol-only", Steps: []Step{{
			// A port entry with a protocol and no port: all of UDP.
			Do: apply(In(Policy("x", "any-udp", Sel("pod", "a")), Peers(), Proto(udp))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(_, to string, p Probe) bool { return to == "x/a" && p.Proto == "tcp" }, false)
			},
		}}},
		{Name: "sctp-is-not-tcp", Steps: []Step{{
			// Allowing SCTP 80 isolates x/a and allows none of the probes.
			Do: apply(In(Policy("x", "sctp-80", Sel("pod", "a")), Peers(), Port(sctp, 80))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
			},
		}}},
		{Name: "egress-to-dns-only", Steps: []Step{{
			// x may send to UDP and TCP 53 anywhere and nothing else.
			Do:     apply(Out(Policy("x", "dns-only", nil, egressOnly...), Peers(), Port(udp, 53), Port(tcp, 53))),
			Probes: []Probe{TCP80, TCP81, UDP80, UDP53},
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, _ string, p Probe) bool { return InNamespace(from, "x") && p != UDP53 }, false)
			},
		}}},
	}
}

func ipBlockScenarios() []Scenario {
	return []Scenario{
		{Name: "egress-ipblock-with-except", Steps: []Step{{
			// x/a may send to node 2's pod range, except to y/b.
			Do: func(c Cluster) error {
				return c.Apply(Out(Policy("x", "a-to-node2-not-y-b", Sel("pod", "a"), egressOnly...),
					Peers(CIDRPeer(c.NodeCIDR(2), Host32(c.Addr("y/b"))))))
			},
			Expect: func(_ Cluster, m *Matrix) {
				m.Egress("x/a", false)
				m.Set(func(from, to string, _ Probe) bool { return from == "x/a" && NodeOf(to) == 2 && to != "y/b" }, true)
			},
		}}},
		{Name: "ingress-ipblock-with-except", Steps: []Step{{
			// x/b admits node 2's pod range except y/b: node 1's pods and
			// y/b are denied.
			Do: func(c Cluster) error {
				return c.Apply(In(Policy("x", "b-from-node2", Sel("pod", "b"), ingressOnly...),
					Peers(CIDRPeer(c.NodeCIDR(2), Host32(c.Addr("y/b"))))))
			},
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, to string, _ Probe) bool { return to == "x/b" && (NodeOf(from) == 1 || from == "y/b") }, false)
			},
		}}},
		{Name: "ipblock-overlapping-except-allowed-by-other-policy", Steps: []Step{{
			// One policy excludes y/b from node 2's range, another allows
			// exactly y/b: the union allows it.
			Do: func(c Cluster) error {
				yb := Host32(c.Addr("y/b"))
				return apply(
					Out(Policy("x", "node2-not-y-b", Sel("pod", "a"), egressOnly...), Peers(CIDRPeer(c.NodeCIDR(2), yb))),
					Out(Policy("x", "y-b-only", Sel("pod", "a"), egressOnly...), Peers(CIDRPeer(yb))),
				)(c)
			},
			Expect: func(_ Cluster, m *Matrix) {
				m.Egress("x/a", false)
				m.Set(func(from, to string, _ Probe) bool { return from == "x/a" && NodeOf(to) == 2 }, true)
			},
		}}},
	}
}

func updateScenarios() []Scenario {
	return []Scenario{
		{Name: "policy-update", Steps: []Step{{
			Name: "x/a admits pod=b",
			Do:   apply(In(Policy("x", "a-from", Sel("pod", "a")), Peers(PodPeer(Sel("pod", "b"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false).Pair("x/b", "x/a", true)
			},
		}, {
			Name: "updated to admit pod=c on TCP 80",
			Do:   apply(In(Policy("x", "a-from", Sel("pod", "a")), Peers(PodPeer(Sel("pod", "c"))), Port(tcp, 80))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false).Pair("x/c", "x/a", true, TCP80)
			},
		}}},
		{Name: "policy-delete", Steps: []Step{{
			Name: "deny all",
			Do:   apply(Policy("x", "deny-all", nil, both...)),
			Expect: func(_ Cluster, m *Matrix) {
				m.Set(func(from, to string, _ Probe) bool { return InNamespace(from, "x") || InNamespace(to, "x") }, false)
			},
		}, {
			Name:   "deleted",
			Do:     func(c Cluster) error { return c.DeletePolicy("x", "deny-all") },
			Expect: func(Cluster, *Matrix) {},
		}}},
		{Name: "peer-pod-relabel", Steps: []Step{{
			Name: "x/a admits pod=b",
			Do:   apply(In(Policy("x", "a-from-b", Sel("pod", "a")), Peers(PodPeer(Sel("pod", "b"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false).Pair("x/b", "x/a", true)
			},
		}, {
			Name: "x/c relabelled pod=b",
			Do:   func(c Cluster) error { return c.Apply(PodOn("x/c", c.Addr("x/c"), map[string]string{"pod": "b"})) },
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false).Pair("x/b", "x/a", true).Pair("x/c", "x/a", true)
			},
		}}},
		{Name: "target-pod-relabel", Steps: []Step{{
			Name:   "policy selects role=isolated: nobody yet",
			Do:     apply(Policy("x", "isolate", Sel("role", "isolated"), ingressOnly...)),
			Expect: func(Cluster, *Matrix) {},
		}, {
			Name: "x/b relabelled role=isolated",
			Do: func(c Cluster) error {
				return c.Apply(PodOn("x/b", c.Addr("x/b"), map[string]string{"pod": "b", "role": "isolated"}))
			},
			Expect: func(_ Cluster, m *Matrix) { m.Ingress("x/b", false) },
		}, {
			Name:   "label removed",
			Do:     func(c Cluster) error { return c.Apply(PodOn("x/b", c.Addr("x/b"), nil)) },
			Expect: func(Cluster, *Matrix) {},
		}}},
		{Name: "namespace-relabel", Steps: []Step{{
			Name: "x/a admits namespaces team=blue: none yet",
			Do:   apply(In(Policy("x", "a-from-blue", Sel("pod", "a")), Peers(NSPeer(Sel("team", "blue"))))),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
			},
		}, {
			Name: "y labelled team=blue",
			Do:   apply(NamespaceObject("y", map[string]string{"ns": "y", "team": "blue"})),
			Expect: func(_ Cluster, m *Matrix) {
				m.Ingress("x/a", false)
				m.Set(func(from, to string, _ Probe) bool { return to == "x/a" && InNamespace(from, "y") }, true)
			},
		}}},
	}
}
