package netpol

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	. "github.com/pier-cni/pier/internal/netpol/netpoltest" //nolint:revive // the policy builders read as a DSL
)

func TestCompilePolicyTypes(t *testing.T) {
	egressRule := Out(Policy("x", "p", nil), Peers())
	for _, c := range []struct {
		name string
		np   *networkingv1.NetworkPolicy
		want [2]bool // ingress, egress
	}{
		{"no types, no rules: ingress", Policy("x", "p", nil), [2]bool{true, false}},
		{"no types, egress rules: both", egressRule, [2]bool{true, true}},
		{"egress only", Policy("x", "p", nil, networkingv1.PolicyTypeEgress), [2]bool{false, true}},
		{"both", Policy("x", "p", nil, networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress), [2]bool{true, true}},
	} {
		p, err := compile(c.np)
		if err != nil || p.dirs != c.want {
			t.Errorf("%s: dirs %v (%v), want %v", c.name, p.dirs, err, c.want)
		}
	}
}

// TestCompileRules: each case is one ingress rule and what it compiles to.
func TestCompileRules(t *testing.T) {
	tcp, udp, sctp := corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP
	ten := netip.MustParsePrefix("10.0.0.0/8")
	for _, c := range []struct {
		name    string
		peers   []networkingv1.NetworkPolicyPeer
		ports   []networkingv1.NetworkPolicyPort
		want    *dataplane.Rule // nil: the rule matches nothing
		sets    []string        // canonical selector texts
		ports2  []string        // port names
		errWant string
	}{
		{name: "empty rule: everyone, every port", want: &dataplane.Rule{}},
		{name: "pod selector: the policy's namespace",
			peers: Peers(PodPeer(Sel("app", "web"))),
			want:  &dataplane.Rule{Peers: []dataplane.Peer{{Set: set("namespace x pods(app=web)")}}},
			sets:  []string{"namespace x pods(app=web)"}},
		{name: "namespace selector: every pod of those namespaces",
			peers: Peers(NSPeer(Sel("team", "a"))),
			want:  &dataplane.Rule{Peers: []dataplane.Peer{{Set: set("namespaces(team=a) pods()")}}},
			sets:  []string{"namespaces(team=a) pods()"}},
		{name: "both selectors in one peer: an intersection",
			peers: Peers(BothPeer(Sel("team", "a"), Expr("tier", metav1.LabelSelectorOpIn, "db", "cache"))),
			want:  &dataplane.Rule{Peers: []dataplane.Peer{{Set: set("namespaces(team=a) pods(tier in (cache,db))")}}},
			sets:  []string{"namespaces(team=a) pods(tier in (cache,db))"}},
		{name: "the same selector twice is one set",
			peers: Peers(PodPeer(Sel("a", "b")), PodPeer(Sel("a", "b"))),
			want:  &dataplane.Rule{Peers: []dataplane.Peer{{Set: set("namespace x pods(a=b)")}, {Set: set("namespace x pods(a=b)")}}},
			sets:  []string{"namespace x pods(a=b)"}},
		{name: "ipBlock with excepts",
			peers: Peers(CIDRPeer(ten, netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.2.3.4/32"))),
			want: &dataplane.Rule{Peers: []dataplane.Peer{{CIDR: ten,
				Except: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.2.3.4/32")}}}}},
		{name: "ipBlock CIDR with host bits is masked",
			peers: Peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.1.2.3/8"}}),
			want:  &dataplane.Rule{Peers: []dataplane.Peer{{CIDR: ten}}}},
		{name: "except outside the CIDR: the peer matches nothing",
			peers: Peers(CIDRPeer(ten, netip.MustParsePrefix("192.168.0.0/16"))), errWant: "not inside"},
		{name: "bad CIDR and a good peer: the good one stays",
			peers: Peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "nope"}}, PodPeer(Sel("a", "b"))),
			want:  &dataplane.Rule{Peers: []dataplane.Peer{{Set: set("namespace x pods(a=b)")}}},
			sets:  []string{"namespace x pods(a=b)"}, errWant: "ipBlock cidr"},
		{name: "bad selector operator: the peer matches nothing",
			peers:   Peers(PodPeer(Expr("a", "Near", "b"))),
			errWant: "podSelector"},
		{name: "port without protocol is TCP", ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromInt32(80))}},
			want: &dataplane.Rule{Ports: []dataplane.Port{{Proto: dataplane.TCP, First: 80, Last: 80}}}},
		{name: "range", ports: []networkingv1.NetworkPolicyPort{Range(udp, 1000, 2000)},
			want: &dataplane.Rule{Ports: []dataplane.Port{{Proto: dataplane.UDP, First: 1000, Last: 2000}}}},
		{name: "protocol alone", ports: []networkingv1.NetworkPolicyPort{Proto(sctp)},
			want: &dataplane.Rule{Ports: []dataplane.Port{{Proto: dataplane.SCTP}}}},
		{name: "named port", ports: []networkingv1.NetworkPolicyPort{Named(tcp, "http")},
			want:   &dataplane.Rule{Ports: []dataplane.Port{{Proto: dataplane.TCP, Name: "http"}}},
			ports2: []string{"http"}},
		{name: "endPort before port: matches nothing", ports: []networkingv1.NetworkPolicyPort{Range(tcp, 90, 80)}, errWant: "endPort"},
		{name: "endPort with a named port", ports: []networkingv1.NetworkPolicyPort{withEnd(Named(tcp, "http"), 90)}, errWant: "named port"},
		{name: "unknown protocol", ports: []networkingv1.NetworkPolicyPort{Proto("ICMP")}, errWant: "protocol"},
		{name: "bad port name", ports: []networkingv1.NetworkPolicyPort{Named(tcp, "Not_A_Name")}, errWant: "port name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := compile(In(Policy("x", "p", nil), c.peers, c.ports...))
			if (err != nil) != (c.errWant != "") || err != nil && !strings.Contains(err.Error(), c.errWant) {
				t.Fatalf("error %v, want one containing %q", err, c.errWant)
			}
			var got *dataplane.Rule
			if len(p.rules[dataplane.Ingress]) == 1 {
				got = &p.rules[dataplane.Ingress][0]
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("rule %+v, want %+v", got, c.want)
			}
			var sets []string
			for _, s := range p.selectors {
				sets = append(sets, s.canonical)
			}
			if !reflect.DeepEqual(sets, c.sets) || !reflect.DeepEqual(p.portNames, c.ports2) {
				t.Errorf("sets %v ports %v, want %v %v", sets, p.portNames, c.sets, c.ports2)
			}
		})
	}
}

func set(canonical string) string { return dataplane.SelectorSetName(canonical) }

func ptr[T any](v T) *T { return &v }

func withEnd(p networkingv1.NetworkPolicyPort, end int32) networkingv1.NetworkPolicyPort {
	p.EndPort = &end
	return p
}

// TestSelectorMatches: which pods a compiled peer picks.
func TestSelectorMatches(t *testing.T) {
	pod := func(ns string, l map[string]string) *podState {
		return &podState{ref: dataplane.Ref{Namespace: ns, Name: "p"}, labels: labels.Set(l)}
	}
	nsLabels := func(ns string) labels.Set {
		return namespaceLabels(ns, map[string]string{"team": map[string]string{"x": "a", "y": "b"}[ns]})
	}
	for _, c := range []struct {
		name string
		peer networkingv1.NetworkPolicyPeer
		pod  *podState
		want bool
	}{
		{"pod selector, same namespace", PodPeer(Sel("app", "web")), pod("x", map[string]string{"app": "web"}), true},
		{"pod selector, other namespace", PodPeer(Sel("app", "web")), pod("y", map[string]string{"app": "web"}), false},
		{"pod selector, other labels", PodPeer(Sel("app", "web")), pod("x", map[string]string{"app": "db"}), false},
		{"empty pod selector: every pod of the namespace", PodPeer(&metav1.LabelSelector{}), pod("x", nil), true},
		{"namespace selector", NSPeer(Sel("team", "b")), pod("y", nil), true},
		{"namespace selector, not matching", NSPeer(Sel("team", "b")), pod("x", nil), false},
		{"empty namespace selector: every namespace", NSPeer(&metav1.LabelSelector{}), pod("z", nil), true},
		{"namespace name label", NSPeer(Sel(corev1.LabelMetadataName, "z")), pod("z", nil), true},
		{"both: namespace and pod must match", BothPeer(Sel("team", "b"), Sel("app", "web")), pod("y", map[string]string{"app": "web"}), true},
		{"both: pod matches, namespace not", BothPeer(Sel("team", "b"), Sel("app", "web")), pod("x", map[string]string{"app": "web"}), false},
		{"Exists", PodPeer(Expr("app", metav1.LabelSelectorOpExists)), pod("x", map[string]string{"app": ""}), true},
		{"DoesNotExist", PodPeer(Expr("app", metav1.LabelSelectorOpDoesNotExist)), pod("x", map[string]string{"app": "x"}), false},
		{"NotIn includes pods without the key", PodPeer(Expr("app", metav1.LabelSelectorOpNotIn, "web")), pod("x", nil), true},
	} {
		p, err := compile(In(Policy("x", "p", nil), Peers(c.peer)))
		if err != nil || len(p.selectors) != 1 {
			t.Fatalf("%s: %v %d", c.name, err, len(p.selectors))
		}
		if got := p.selectors[0].matches(c.pod, nsLabels(c.pod.ref.Namespace)); got != c.want {
			t.Errorf("%s: matches %v, want %v", c.name, got, c.want)
		}
	}
}

// TestIsolation: a pod is isolated in a direction when any policy of its
// namespace with that policy type selects it; the chain lists those
// policies in order.
func TestIsolation(t *testing.T) {
	dp := newMemDP()
	e := New(Config{NodeName: "n1", DataPlane: dp})
	mustNil(t, e.Start())
	mustNil(t, e.SetPod(PodObject("x/a", "n1", netip.MustParseAddr("10.0.0.2"), map[string]string{"app": "web"})))
	mustNil(t, e.SetPod(PodObject("x/b", "n1", netip.MustParseAddr("10.0.0.3"), map[string]string{"app": "db"})))
	mustNil(t, e.SetPod(PodObject("y/a", "n1", netip.MustParseAddr("10.0.0.4"), map[string]string{"app": "web"})))
	mustNil(t, e.SetPolicy(Policy("x", "web-in", Sel("app", "web"))))
	mustNil(t, e.SetPolicy(Policy("x", "all-out", nil, networkingv1.PolicyTypeEgress)))
	mustNil(t, e.SetPolicy(Policy("x", "all-in", nil, networkingv1.PolicyTypeIngress)))
	for _, c := range []struct {
		pod      dataplane.Ref
		dir      dataplane.Direction
		verdict  dataplane.PodVerdict
		policies []dataplane.Ref
	}{
		{r("x", "a"), dataplane.Ingress, dataplane.Isolated, []dataplane.Ref{r("x", "all-in"), r("x", "web-in")}},
		{r("x", "a"), dataplane.Egress, dataplane.Isolated, []dataplane.Ref{r("x", "all-out")}},
		{r("x", "b"), dataplane.Ingress, dataplane.Isolated, []dataplane.Ref{r("x", "all-in")}},
		{r("y", "a"), dataplane.Ingress, dataplane.Open, nil},
		{r("y", "a"), dataplane.Egress, dataplane.Open, nil},
	} {
		got := dp.pods[dataplane.PodChainName(c.pod, c.dir)]
		if got.Verdict != c.verdict || !reflect.DeepEqual(got.Policies, c.policies) {
			t.Errorf("%s %s: %d %v, want %d %v", c.pod, c.dir, got.Verdict, got.Policies, c.verdict, c.policies)
		}
	}
}

func mustNil(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func r(ns, name string) dataplane.Ref { return dataplane.Ref{Namespace: ns, Name: name} }
