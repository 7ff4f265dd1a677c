package kube

import (
	"encoding/json"
	"net/netip"
	"slices"
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
	s, problems := Plan(routing.ModeHostGW, self, nodes, prefixes("10.244.0.0/16", "fd00:10:244::/56"))
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
		"node i: range 192.0.2.0/24 not routed: it lies outside the cluster CIDRs"} {
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
	s, problems := Plan(routing.ModeVXLAN, self, []Node{self, b, c, d}, prefixes("10.244.0.0/16", "fd00:10:244::/56"))
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
			s, _ := Plan(mode, me, nodes, fuzzCluster)
			checkState(t, mode, me, nodes, s)
		}
	})
}

// fuzzCluster holds the fuzzer's nodes' ranges and, as a 10.0.0.0/8
// cluster CIDR over nodes in 10.x would, the underlay too.
var fuzzCluster = prefixes("10.244.0.0/16", "192.0.2.0/24", "fd00::/8")

func checkState(t *testing.T, mode string, self Node, nodes []Node, s routing.State) {
	t.Helper()
	for i, r := range s.Routes {
		if !r.Via.IsValid() || r.Via.Is4() != r.Dst.Addr().Is4() {
			t.Fatalf("%s: route %v via %v: next hop of another family", mode, r.Dst, r.Via)
		}
		if r.Dst.Bits() == 0 || !slices.ContainsFunc(fuzzCluster, func(c netip.Prefix) bool { return c.Bits() <= r.Dst.Bits() && c.Contains(r.Dst.Addr()) }) {
			t.Fatalf("%s: route to %v outside the cluster CIDRs", mode, r.Dst)
		}
		for _, n := range nodes {
			for _, a := range []netip.Addr{n.InternalIP4, n.InternalIP6, n.VTEP} {
				if a.IsValid() && r.Dst.Contains(a) {
					t.Fatalf("%s: route to %v takes node %s's address %v", mode, r.Dst, n.Name, a)
				}
			}
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
	for i, p := range s.Peers {
		if p.Underlay == self.VTEP || slices.Equal(p.MAC, routing.MACFor(self.VTEP)) {
			t.Fatalf("peer %+v claims this node's VTEP or MAC", p)
		}
		for _, o := range s.Peers[:i] {
			if o.Underlay == p.Underlay || slices.Equal(o.MAC, p.MAC) {
				t.Fatalf("peers %+v and %+v share a VTEP or MAC", o, p)
			}
		}
	}
}

// TestParseNodeVTEPMAC: a VTEP MAC other than the one pierd derives from
// the VTEP address is no pierd's, and is refused with its VTEP: a Node
// publishing another node's MAC would otherwise take the traffic the
// other nodes send to that node.
func TestParseNodeVTEPMAC(t *testing.T) {
	o := nodeObj("thief", []string{"10.244.66.0/24"}, "192.0.2.66")
	o.Annotations = map[string]string{AnnotationVTEP: "192.0.2.66", AnnotationVTEPMAC: routing.MACFor(netip.MustParseAddr("192.0.2.2")).String()}
	n, err := ParseNode(o)
	if err == nil || !strings.Contains(err.Error(), "is not the MAC of VTEP 192.0.2.66") {
		t.Fatalf("error %v, want the MAC refused", err)
	}
	if n.VTEP.IsValid() || n.VTEPMAC != nil || len(n.PodCIDRs) != 1 {
		t.Fatalf("usable part %+v: want the ranges without the VTEP", n)
	}
}

// TestPlanVTEPConflicts: nodes publishing one VTEP (and so one MAC), or
// IPv6 VTEPs whose derived MACs meet, or this node's VTEP, are all left
// out, with the names of the others: whichever of them were kept would
// take the others' traffic.
func TestPlanVTEPConflicts(t *testing.T) {
	vtep := func(o *corev1.Node, ip string) Node {
		o.Annotations = map[string]string{AnnotationVTEP: ip, AnnotationVTEPMAC: routing.MACFor(netip.MustParseAddr(ip)).String()}
		return mustParse(t, o)
	}
	self := vtep(nodeObj("a", []string{"10.244.1.0/24"}, "192.0.2.1"), "192.0.2.1")
	nodes := []Node{self,
		vtep(nodeObj("b", []string{"10.244.2.0/24"}, "192.0.2.2"), "192.0.2.2"),
		vtep(nodeObj("c", []string{"10.244.3.0/24"}, "192.0.2.3"), "192.0.2.3"),
		vtep(nodeObj("c-copy", []string{"10.244.33.0/24"}, "192.0.2.33"), "192.0.2.3"), // c's VTEP
		vtep(nodeObj("d", []string{"10.244.4.0/24"}, "192.0.2.4"), "192.0.2.1"),        // this node's
		vtep(nodeObj("e", []string{"10.244.5.0/24"}), "fd00:1::1:5"),
		vtep(nodeObj("f", []string{"10.244.6.0/24"}), "fd00:2::1:5"), // e's MAC, another VTEP
	}
	s, problems := Plan(routing.ModeVXLAN, self, nodes, prefixes("10.244.0.0/16"))
	if len(s.Routes) != 1 || s.Routes[0].Dst != netip.MustParsePrefix("10.244.2.0/24") || len(s.Peers) != 1 {
		t.Fatalf("plan %+v: want only b routed", s)
	}
	joined := strings.Join(problems, "\n")
	for _, w := range []string{
		"node c: range 10.244.3.0/24 not routed: nodes c, c-copy all publish VTEP 192.0.2.3",
		"node c-copy: range 10.244.33.0/24 not routed: nodes c, c-copy all publish VTEP 192.0.2.3",
		"node d: range 10.244.4.0/24 not routed: its VTEP 192.0.2.1 is this node's",
		"node e: range 10.244.5.0/24 not routed: nodes e, f all publish VTEP MAC 0a:58:00:01:00:05",
		"node f: range 10.244.6.0/24 not routed: nodes e, f all publish VTEP MAC 0a:58:00:01:00:05",
	} {
		if !strings.Contains(joined, w) {
			t.Errorf("problems lack %q:\n%s", w, joined)
		}
	}
}

// TestPlanOnlyPodRanges: only ranges inside the cluster CIDRs are routed
// (none known: none is), and none that holds any node's address, this
// node's or another's, of either family.
func TestPlanOnlyPodRanges(t *testing.T) {
	self := mustParse(t, nodeObj("a", []string{"10.244.1.0/24"}, "192.0.2.1"))
	nodes := []Node{self,
		mustParse(t, nodeObj("b", []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, "192.0.2.2", "fd00:10:244:7::2")),
		mustParse(t, nodeObj("c", []string{"10.96.0.0/24"}, "192.0.2.3")),                             // the service CIDR
		mustParse(t, nodeObj("d", []string{"10.244.4.0/24", "fd00:10:244:7::/64"}, "192.0.2.4")),      // holds b's IPv6 address
		mustParse(t, nodeObj("e", []string{"10.244.5.0/24"}, "192.0.2.5", "fd00:10:244:5::1")),        // fine
		mustParse(t, nodeObj("f", []string{"10.244.6.0/24"}, "10.244.6.1")),                           // its own next hop
		mustParse(t, nodeObj("g", []string{"10.244.6.0/23"}, "192.0.2.7")),                            // holds f's address
		mustParse(t, nodeObj("h", []string{"fd00:10:244:8::/64"}, "192.0.2.8", "fd00:10:244:100::8")), // fine
	}
	s, problems := Plan(routing.ModeHostGW, self, nodes, prefixes("10.244.0.0/16", "fd00:10:244::/56"))
	got := map[string]string{}
	for _, r := range s.Routes {
		got[r.Dst.String()] = r.Via.String()
	}
	want := map[string]string{"10.244.2.0/24": "192.0.2.2", "fd00:10:244:2::/64": "fd00:10:244:7::2",
		"10.244.4.0/24": "192.0.2.4", "10.244.5.0/24": "192.0.2.5", "fd00:10:244:8::/64": "fd00:10:244:100::8"}
	if len(got) != len(want) {
		t.Fatalf("routes %v, want %v\n%s", got, want, strings.Join(problems, "\n"))
	}
	for d, v := range want {
		if got[d] != v {
			t.Errorf("route %s via %q, want %s", d, got[d], v)
		}
	}
	joined := strings.Join(problems, "\n")
	for _, w := range []string{
		"node c: range 10.96.0.0/24 not routed: it lies outside the cluster CIDRs",
		"node d: range fd00:10:244:7::/64 not routed: it holds node b's address fd00:10:244:7::2",
		"node f: range 10.244.6.0/24 not routed: it holds node f's address 10.244.6.1",
		"node g: range 10.244.6.0/23 not routed: it holds node f's address 10.244.6.1",
	} {
		if !strings.Contains(joined, w) {
			t.Errorf("problems lack %q:\n%s", w, joined)
		}
	}
	if s, problems := Plan(routing.ModeHostGW, self, nodes, nil); len(s.Routes) != 0 || !strings.Contains(strings.Join(problems, "\n"), "no cluster CIDR is known") {
		t.Fatalf("without cluster CIDRs: routes %+v, problems %q", s.Routes, problems)
	}
}
