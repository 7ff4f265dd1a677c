package routing_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/kube"
	"github.com/pier-cni/pier/internal/routing"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestNodeCannotTakeALocalNetwork guards the node's own networks against
// a Node object whose spec.podCIDRs is one of them. Plan refuses a range
// holding this node's InternalIP or VTEP, but a node has other networks:
// here eth1 (a veth: this kernel has no dummy links) holds 10.10.0.1/24 (a storage or management network, or
// docker0's 172.17.0.1/16). Node z claims 10.10.0.0/24; the route agent
// routes it to z, and Apply's stale-gateway sweep, meant for a pod range's
// gateway on Pier's bridge, removes 10.10.0.1/24 from eth1, whatever link
// it is on: the node loses that network. A Node must not be able to route
// away, let alone delete, an address or connected network of the node.
func TestNodeCannotTakeALocalNetwork(t *testing.T) {
	testnet.RequireRoot(t)
	node := testnet.NewNS(t, "pt-node-")
	node.MustRun(t, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
	node.MustRun(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "ul0")
	node.MustRun(t, "ip", "link", "set", "ul0", "up")
	node.MustRun(t, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
	node.MustRun(t, "ip", "addr", "add", "10.10.0.1/24", "dev", "eth1")
	node.MustRun(t, "ip", "link", "set", "eth1", "up")

	obj := func(name, cidr, ip string) kube.Node {
		n, err := kube.ParseNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:   corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	self := obj("a", "10.244.1.0/24", "192.0.2.1")
	z := obj("z", "10.10.0.0/24", "192.0.2.26")
	// A cluster CIDR that holds the node's other network (10.0.0.0/8
	// clusters do): only what the node's kernel says can refuse z's range.
	state, problems := kube.Plan(routing.ModeHostGW, self, []kube.Node{self, z}, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	p := &routing.Programmer{Mode: routing.ModeHostGW, NetNS: node.Path}
	if err := p.Apply(state); !errors.Is(err, routing.ErrConflict) || !strings.Contains(err.Error(), "10.10.0.0/24") {
		t.Errorf("Apply did not report refusing 10.10.0.0/24: %v", err)
	}
	addrs := node.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth1")
	if !strings.Contains(addrs, "10.10.0.1/24") {
		t.Errorf("Node z (spec.podCIDRs 10.10.0.0/24) removed eth1's address; eth1 now: %q (plan problems: %q)", strings.TrimSpace(addrs), problems)
	}
	if r := node.MustRun(t, "ip", "-4", "route", "get", "10.10.0.9"); !strings.Contains(r, "dev eth1") {
		t.Errorf("10.10.0.0/24, eth1's network, is routed elsewhere: %s", strings.TrimSpace(r))
	}
}

// TestNodeCannotStealAnotherNodesVTEPMAC guards vxlan peers against a
// Node that publishes another node's VTEP MAC. The FDB maps a MAC to one
// underlay address, and when two peers claim one MAC the first in name
// order is kept: Node "node0" (any node whose name sorts first: its own
// kubelet may set its annotations) copies node2's MAC with its own VTEP,
// and every other node then sends node2's pod traffic, whose neighbour
// entries resolve to that MAC, to node0's address. A MAC that is not its
// VTEP's own (pierd derives it: routing.MACFor), or that another node
// claims too, must not be programmed.
func TestNodeCannotStealAnotherNodesVTEPMAC(t *testing.T) {
	testnet.RequireRoot(t)
	node := testnet.NewNS(t, "pt-node-")
	node.MustRun(t, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
	node.MustRun(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "ul0")
	node.MustRun(t, "ip", "link", "set", "ul0", "up")
	obj := func(name, cidr, vtep, mac string) kube.Node {
		n, err := kube.ParseNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
			Annotations: map[string]string{kube.AnnotationVTEP: vtep, kube.AnnotationVTEPMAC: mac}},
			Spec:   corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: vtep}}}})
		if err != nil && mac == routing.MACFor(netip.MustParseAddr(vtep)).String() {
			t.Fatal(err)
		}
		// ParseNode refuses the thief's MAC (not its VTEP's) and keeps
		// the rest of its Node usable: the plan must still not route it.
		return n
	}
	mac := func(ip string) string { return routing.MACFor(netip.MustParseAddr(ip)).String() }
	self := obj("node1", "10.244.1.0/24", "192.0.2.1", mac("192.0.2.1"))
	victim := obj("node2", "10.244.2.0/24", "192.0.2.2", mac("192.0.2.2"))
	thief := obj("node0", "10.244.66.0/24", "192.0.2.66", mac("192.0.2.2"))
	state, problems := kube.Plan(routing.ModeVXLAN, self, []kube.Node{self, victim, thief}, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")})
	p := &routing.Programmer{Mode: routing.ModeVXLAN, VTEP: netip.MustParseAddr("192.0.2.1"), NetNS: node.Path}
	if err := p.Apply(state); err != nil {
		t.Fatal(err)
	}
	fdb := node.MustRun(t, "bridge", "fdb", "show", "dev", routing.VXLANDevice)
	for _, line := range strings.Split(fdb, "\n") {
		if strings.HasPrefix(line, mac("192.0.2.2")+" ") && !strings.Contains(line, "dst 192.0.2.2 ") {
			t.Errorf("node2's MAC leads elsewhere than node2's VTEP: %q (plan problems: %q)", line, problems)
		}
	}
}
