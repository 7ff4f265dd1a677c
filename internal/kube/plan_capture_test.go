package kube

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/pier-cni/pier/internal/routing"
)

// TestPlanNoRangeHoldsANodeAddress guards the underlay against a Node
// whose spec.podCIDRs holds another node's address. Plan refuses a range
// that holds this node's own InternalIP or VTEP, but not one that holds
// another node's: node z below claims b's InternalIP (and VTEP) as a /32.
// Routed, it takes this node's traffic to b's underlay address (kubelet,
// the API server, ssh) to z; in vxlan mode it also takes the encapsulated
// traffic for b's pods, whose outer destination is that address, into
// pier.vxlan towards z. No pod range can hold a node's address, so such a
// range must be left out and reported, as the one holding this node's is.
func TestPlanNoRangeHoldsANodeAddress(t *testing.T) {
	withVTEP := func(o *corev1.Node, vtep string) *corev1.Node {
		o.Annotations = map[string]string{AnnotationVTEP: vtep, AnnotationVTEPMAC: routing.MACFor(netip.MustParseAddr(vtep)).String()}
		return o
	}
	self := mustParse(t, withVTEP(nodeObj("a", []string{"10.244.1.0/24"}, "192.0.2.1"), "192.0.2.1"))
	b := mustParse(t, withVTEP(nodeObj("b", []string{"10.244.2.0/24"}, "192.0.2.2"), "192.0.2.2"))
	z := mustParse(t, withVTEP(nodeObj("z", []string{"192.0.2.2/32"}, "192.0.2.26"), "192.0.2.26"))
	// Ranges outside the cluster CIDRs are never routed; here they hold
	// the underlay too, as a cluster CIDR of 10.0.0.0/8 does over nodes in
	// 10.x: the range must be refused for the address it holds.
	cluster := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("192.0.2.0/24")}
	for _, mode := range []string{routing.ModeHostGW, routing.ModeVXLAN} {
		s, _ := Plan(mode, self, []Node{self, b, z}, cluster)
		for _, r := range s.Routes {
			for _, n := range []Node{b, z} {
				for i, a := range []netip.Addr{n.InternalIP4, n.VTEP} {
					if r.Dst.Contains(a) && (i == 0 || a != n.InternalIP4) {
						t.Errorf("%s: route %s via %s holds node %s's address %s", mode, r.Dst, r.Via, n.Name, a)
					}
				}
			}
		}
	}
}
