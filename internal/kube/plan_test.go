package kube

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/routing"
)

func nodeObj(name string, cidrs []string, ips ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}

func mustParse(t *testing.T, o *corev1.Node) Node {
	t.Helper()
	n, err := ParseNode(o)
	if err != nil {
		t.Fatalf("%s: %v", o.Name, err)
	}
	return n
}

func TestParseNode(t *testing.T) {
	o := nodeObj("n1", []string{"10.244.1.7/24", "fd00:10:244:1::/64"}, "192.0.2.1", "fd00:192::1", "192.0.2.99")
	o.Status.Addresses = append(o.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "198.51.100.1"})
	o.Annotations = map[string]string{AnnotationVTEP: "192.0.2.1", AnnotationVTEPMAC: "0a:58:c0:00:02:01"}
	n := mustParse(t, o)
	if n.PodCIDRs[0] != netip.MustParsePrefix("10.244.1.0/24") || len(n.PodCIDRs) != 2 ||
		n.InternalIP4 != netip.MustParseAddr("192.0.2.1") || n.InternalIP6 != netip.MustParseAddr("fd00:192::1") ||
		n.VTEP != netip.MustParseAddr("192.0.2.1") || n.VTEPMAC.String() != "0a:58:c0:00:02:01" {
		t.Fatalf("%+v", n)
	}
	// spec.podCIDR alone (clusters from before dual stack).
	old := nodeObj("n2", nil, "192.0.2.2")
	old.Spec.PodCIDR = "10.244.2.0/24"
	if n := mustParse(t, old); len(n.PodCIDRs) != 1 || n.PodCIDRs[0] != netip.MustParsePrefix("10.244.2.0/24") {
		t.Fatalf("podCIDR only: %+v", n)
	}
	// What cannot be used is left out and said; the rest stays usable.
	bad := nodeObj("n3", []string{"10.244.3.0/24", "10.244.4.0/24", "nonsense"}, "not-an-ip", "192.0.2.3")
	bad.Annotations = map[string]string{AnnotationVTEP: "192.0.2.3"} // no MAC
	n, err := ParseNode(bad)
	for _, want := range []string{"second range", `"nonsense"`, `"not-an-ip"`, AnnotationVTEPMAC} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if len(n.PodCIDRs) != 1 || n.InternalIP4 != netip.MustParseAddr("192.0.2.3") || n.VTEP.IsValid() {
		t.Fatalf("usable part: %+v", n)
	}
	for _, mac := range []string{"01:00:5e:00:00:01", "00:00:00:00:00:00", "0a:58:c0:00:02:01:ff:ff"} {
		o := nodeObj("n4", nil)
		o.Annotations = map[string]string{AnnotationVTEP: "192.0.2.4", AnnotationVTEPMAC: mac}
		if _, err := ParseNode(o); err == nil {
			t.Errorf("MAC %s accepted", mac)
		}
	}
}

func TestPlanHostGW(t *testing.T) {
	self := mustParse(t, nodeObj("a", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "192.0.2.1", "fd00:192::1"))
	nodes := []Node{
		self,
		mustParse(t, nodeObj("c", []string{"10.244.3.0/24", "fd00:10:244:3::/64"}, "192.0.2.3")), // no IPv6 InternalIP
		mustParse(t, nodeObj("b", []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, "192.0.2.2", "fd00:192::2")),
		mustParse(t, nodeObj("d", []string{"10.244.2.128/25"}, "192.0.2.4")), // overlaps b's
		mustParse(t, nodeObj("e", []string{"10.244.1.0/24"}, "192.0.2.5")),   // overlaps self's
		mustParse(t, nodeObj("f", nil, "192.0.2.6")),                         // no range yet
		mustParse(t, nodeObj("g", []string{"10.244.7.0/24"}, "192.0.2.1")),   // claims self's address
		mustParse(t, nodeObj("h", []string{"0.0.0.0/0"}, "192.0.2.8")),       // every address
		mustParse(t, nodeObj("i", []string{"192.0.2.0/24"}, "192.0.2.9")),    // the underlay
	}
	s, problems := Plan(routing.ModeHostGW, self, nodes)
	want := []routing.Route{
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("192.0.2.2")},
		{Dst: netip.MustParsePrefix("fd00:10:244:2::/64"), Via: netip.MustParseAddr("fd00:192::2")},
		{Dst: netip.MustParsePrefix("10.244.3.0/24"), Via: netip.MustParseAddr("192.0.2.3")},
	}
	if len(s.Routes) != len(want) || len(s.Peers) != 0 {
		t.Fatalf("plan %+v, want %+v", s, want)
	}
	for i := range want {
		if s.Routes[i] != want[i] {
			t.Fatalf("route %d: %+v, want %+v", i, s.Routes[i], want[i])
		}
	}
	joined := strings.Join(problems, "\n")
	for _, w := range []string{"node c: range fd00:10:244:3::/64 not routed: the node has no InternalIP",
		"node d: range 10.244.2.128/25 not routed: it overlaps 10.244.2.0/24",
		"node e: range 10.244.1.0/24 not routed: it overlaps this node's range",
		"node g: range 10.244.7.0/24 not routed: the node's InternalIP 192.0.2.1 is this node's",
		"node h: range 0.0.0.0/0 not routed: it holds every address",
		"node i: range 192.0.2.0/24 not routed: it holds this node's address 192.0.2.1"} {
		if !strings.Contains(joined, w) {
			t.Errorf("problems lack %q:\n%s", w, joined)
		}
	}
}

func TestPlanVXLAN(t *testing.T) {
	withVTEP := func(o *corev1.Node, vtep, mac string) *corev1.Node {
		o.Annotations = map[string]string{AnnotationVTEP: vtep, AnnotationVTEPMAC: mac}
		return o
	}
	self := mustParse(t, withVTEP(nodeObj("a", []string{"10.244.1.0/24"}, "192.0.2.1"), "192.0.2.1", "0a:58:c0:00:02:01"))
	b := mustParse(t, withVTEP(nodeObj("b", []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, "192.0.2.2"), "192.0.2.2", "0a:58:c0:00:02:02"))
	c := mustParse(t, nodeObj("c", []string{"10.244.3.0/24"}, "192.0.2.3")) // pierd not up yet
	d := mustParse(t, withVTEP(nodeObj("d", []string{"10.244.4.0/24"}), "fd00:192::4", "0a:58:00:00:00:04"))
	s, problems := Plan(routing.ModeVXLAN, self, []Node{self, b, c, d})
	if len(s.Routes) != 2 || s.Routes[0].Via != netip.MustParseAddr("10.244.2.0") || s.Routes[1].Via != netip.MustParseAddr("fd00:10:244:2::") {
		t.Fatalf("routes: %+v", s.Routes)
	}
	if len(s.Peers) != 1 || s.Peers[0].Underlay != b.VTEP || s.Peers[0].MAC.String() != "0a:58:c0:00:02:02" || len(s.Peers[0].NextHops) != 2 {
		t.Fatalf("peers: %+v", s.Peers)
	}
	joined := strings.Join(problems, "\n")
	if !strings.Contains(joined, "node c: range 10.244.3.0/24 not routed: the node has published no VTEP") ||
		!strings.Contains(joined, "node d: range 10.244.4.0/24 not routed: its VTEP fd00:192::4 is of another family") {
		t.Fatalf("problems:\n%s", joined)
	}
}

// FuzzNodeRoutes feeds arbitrary Node objects (as the API would decode
// them) through ParseNode and Plan, beside well-formed nodes, in both
// modes: nothing may panic, and whatever is routed must be routable — a
// next hop of the range's family, no range of the node itself, no two
// routes to overlapping ranges, a peer for every vxlan route.
func FuzzNodeRoutes(f *testing.F) {
	seeds := []string{
		`{"metadata":{"name":"x"},"spec":{"podCIDRs":["10.244.9.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.9"}]}}`,
		`{"metadata":{"name":"x","annotations":{"pier-cni.github.io/vxlan-vtep":"192.0.2.9","pier-cni.github.io/vxlan-mac":"0a:58:c0:00:02:09"}},"spec":{"podCIDR":"10.244.9.0/24"}}`,
		`{"metadata":{"name":"a"},"spec":{"podCIDRs":["10.244.1.0/24"]}}`,
		`{"metadata":{"name":"x"},"spec":{"podCIDRs":["0.0.0.0/0","::/0"]},"status":{"addresses":[{"type":"InternalIP","address":"::ffff:192.0.2.9"}]}}`,
		`{"metadata":{"name":"x","annotations":{"pier-cni.github.io/vxlan-vtep":"fe80::1%eth0","pier-cni.github.io/vxlan-mac":"zz"}},"spec":{"podCIDRs":["fd00::/64","fd00::/48","10.0.0.1/32"]}}`,
		`{"metadata":{}}`, `null`, `{"spec":{"podCIDRs":[""]}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), byte(0))
	}
	self := Node{Name: "a", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		InternalIP4: netip.MustParseAddr("192.0.2.1"), VTEP: netip.MustParseAddr("192.0.2.1")}
	b := Node{Name: "b", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}, InternalIP4: netip.MustParseAddr("192.0.2.2"),
		VTEP: netip.MustParseAddr("192.0.2.2"), VTEPMAC: routing.MACFor(netip.MustParseAddr("192.0.2.2"))}
	f.Fuzz(func(t *testing.T, data []byte, order byte) {
		var o corev1.Node
		if json.Unmarshal(data, &o) != nil {
			return
		}
		n, _ := ParseNode(&o)
		for _, p := range n.PodCIDRs {
			if p != p.Masked() {
				t.Fatalf("unmasked range %s", p)
			}
		}
		me := self
		if order&2 == 2 {
			me.PodCIDRs = nil // a node whose range is not known yet
		}
		nodes := []Node{me, b, n}
		if order&1 == 1 {
			nodes = []Node{n, b, me}
		}
		for _, mode := range []string{routing.ModeHostGW, routing.ModeVXLAN} {
			s, _ := Plan(mode, me, nodes)
			checkState(t, mode, me, s)
		}
	})
}

func checkState(t *testing.T, mode string, self Node, s routing.State) {
	t.Helper()
	for i, r := range s.Routes {
		if !r.Via.IsValid() || r.Via.Is4() != r.Dst.Addr().Is4() {
			t.Fatalf("%s: route %v via %v: next hop of another family", mode, r.Dst, r.Via)
		}
		if r.Dst.Bits() == 0 || r.Dst.Contains(self.InternalIP4) || r.Dst.Contains(self.VTEP) {
			t.Fatalf("%s: route to %v takes over this node's own traffic", mode, r.Dst)
		}
		if mode == routing.ModeHostGW && r.Dst.Contains(r.Via) {
			t.Fatalf("%s: route to %v via %v, inside it", mode, r.Dst, r.Via)
		}
		for _, own := range self.PodCIDRs {
			if own.Overlaps(r.Dst) {
				t.Fatalf("%s: route to %v overlaps own range %v", mode, r.Dst, own)
			}
		}
		for _, o := range s.Routes[:i] {
			if o.Dst.Overlaps(r.Dst) {
				t.Fatalf("%s: routes to %v and %v overlap", mode, o.Dst, r.Dst)
			}
		}
		if mode == routing.ModeVXLAN {
			found := false
			for _, p := range s.Peers {
				for _, h := range p.NextHops {
					found = found || h == r.Via
				}
				if len(p.MAC) != 6 || !p.Underlay.IsValid() {
					t.Fatalf("peer %+v without MAC or underlay", p)
				}
			}
			if !found {
				t.Fatalf("vxlan route %v via %v has no peer", r.Dst, r.Via)
			}
		}
	}
}
