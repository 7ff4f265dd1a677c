package routing

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/testnet"
)

func TestMACFor(t *testing.T) {
	if m := MACFor(netip.MustParseAddr("192.0.2.7")).String(); m != "0a:58:c0:00:02:07" {
		t.Fatal(m)
	}
	if m := MACFor(netip.MustParseAddr("fd00::1:2")).String(); m != "0a:58:00:01:00:02" {
		t.Fatal(m)
	}
}

// testNode is a node namespace on the test's underlay (192.0.2.i/24 and
// fd00:192::i/64 on ul0) with one pod namespace behind a veth: the pod holds
// the second address of the node's ranges, the node the first (the
// gateway), as the plugin would build it.
type testNode struct {
	ns       *testnet.NS
	pod      *testnet.NS
	ip, ip6  netip.Addr
	v4, v6   netip.Prefix // the node's pod ranges
	pod4     netip.Addr
	pod6     netip.Addr
	handle   *netlink.Handle
	programr *Programmer
}

// newUnderlay returns a namespace holding the bridge "ul" the test nodes
// join.
func newUnderlay(t *testing.T) *testnet.NS {
	t.Helper()
	testnet.RequireRoot(t)
	ul := testnet.NewNS(t, "pt-ul-")
	ul.MustRun(t, "ip", "link", "add", "ul", "type", "bridge")
	ul.MustRun(t, "ip", "link", "set", "ul", "up")
	return ul
}

func newTestNode(t *testing.T, ul *testnet.NS, i int, mode string) *testNode {
	t.Helper()
	n := &testNode{
		ns:   testnet.NewNS(t, "pt-node-"),
		pod:  testnet.NewNS(t, "pt-c-"),
		ip:   netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i)),
		ip6:  netip.MustParseAddr(fmt.Sprintf("fd00:192::%d", i)),
		v4:   netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)),
		v6:   netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", i)),
		pod4: netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", i)),
		pod6: netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::2", i)),
	}
	peer := fmt.Sprintf("ul%d", i)
	ul.MustRun(t, "ip", "link", "add", peer, "type", "veth", "peer", "name", "ul0", "netns", n.ns.Name)
	ul.MustRun(t, "ip", "link", "set", peer, "master", "ul", "up")
	n.ns.MustRun(t, "ip", "addr", "add", n.ip.String()+"/24", "dev", "ul0")
	n.ns.MustRun(t, "ip", "addr", "add", n.ip6.String()+"/64", "dev", "ul0", "nodad")
	n.ns.MustRun(t, "ip", "link", "set", "ul0", "up")
	n.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	n.ns.MustRun(t, "ip", "link", "add", "pod", "type", "veth", "peer", "name", "eth0", "netns", n.pod.Name)
	n.ns.MustRun(t, "ip", "addr", "add", n.v4.Addr().Next().String()+"/24", "dev", "pod")
	n.ns.MustRun(t, "ip", "addr", "add", n.v6.Addr().Next().String()+"/64", "dev", "pod", "nodad")
	n.ns.MustRun(t, "ip", "link", "set", "pod", "up")
	n.pod.MustRun(t, "ip", "addr", "add", n.pod4.String()+"/24", "dev", "eth0")
	n.pod.MustRun(t, "ip", "addr", "add", n.pod6.String()+"/64", "dev", "eth0", "nodad")
	n.pod.MustRun(t, "ip", "link", "set", "eth0", "up")
	n.pod.MustRun(t, "ip", "route", "add", "default", "via", n.v4.Addr().Next().String())
	n.pod.MustRun(t, "ip", "-6", "route", "add", "default", "via", n.v6.Addr().Next().String())
	h, err := netns.GetFromPath(n.ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	n.handle, err = netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.handle.Close)
	n.programr = &Programmer{Mode: mode, VTEP: n.ip, Bridges: []string{"pier0"}, NetNS: n.ns.Path}
	return n
}

// plan is what a control plane would compute for n: every other node's
// ranges, via its underlay address (host-gw) or, in vxlan mode, via the
// range's network address as the neighbour key (both families over the
// IPv4 underlay).
func (n *testNode) plan(others ...*testNode) State {
	var s State
	for _, o := range others {
		if n.programr.Mode == ModeHostGW {
			s.Routes = append(s.Routes, Route{Dst: o.v4, Via: o.ip}, Route{Dst: o.v6, Via: o.ip6})
			continue
		}
		s.Routes = append(s.Routes, Route{Dst: o.v4, Via: o.v4.Addr()}, Route{Dst: o.v6, Via: o.v6.Addr()})
		s.Peers = append(s.Peers, Peer{Underlay: o.ip, MAC: MACFor(o.ip), NextHops: []netip.Addr{o.v4.Addr(), o.v6.Addr()}})
	}
	return s
}

func (n *testNode) apply(t *testing.T, s State) {
	t.Helper()
	if err := n.programr.Apply(s); err != nil {
		t.Fatalf("apply on %s: %v", n.ns.Name, err)
	}
}

func ping(t *testing.T, from *testnet.NS, to netip.Addr) error {
	t.Helper()
	out, err := from.Run("ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", to.String())
	if err != nil {
		return fmt.Errorf("ping %s: %v\n%s", to, err, out)
	}
	return nil
}

// pier routes of n, as `ip -j route` prints them.
type ipRoute struct {
	Dst      string   `json:"dst"`
	Gateway  string   `json:"gateway"`
	Dev      string   `json:"dev"`
	Protocol string   `json:"protocol"`
	Flags    []string `json:"flags"`
}

func routes(t *testing.T, n *testnet.NS) map[string]ipRoute {
	t.Helper()
	out := map[string]ipRoute{}
	for _, fam := range []string{"-4", "-6"} {
		var rs []ipRoute
		if err := json.Unmarshal([]byte(n.MustRun(t, "ip", "-j", fam, "route", "show", "proto", "80")), &rs); err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			out[r.Dst] = r
		}
	}
	return out
}

// TestHostGW: two nodes route each other's IPv4 and IPv6 ranges via their
// underlay addresses; pods ping across; an emptied State removes the routes.
func TestHostGW(t *testing.T) {
	ul := newUnderlay(t)
	a, b := newTestNode(t, ul, 1, ModeHostGW), newTestNode(t, ul, 2, ModeHostGW)
	a.apply(t, a.plan(b))
	b.apply(t, b.plan(a))
	for _, to := range []netip.Addr{b.pod4, b.pod6} {
		if err := ping(t, a.pod, to); err != nil {
			t.Fatal(err)
		}
	}
	rs := routes(t, a.ns)
	if r := rs[b.v4.String()]; r.Gateway != b.ip.String() || r.Dev != "ul0" {
		t.Fatalf("route to %s: %+v", b.v4, r)
	}
	if r := rs[b.v6.String()]; r.Gateway != b.ip6.String() {
		t.Fatalf("route to %s: %+v", b.v6, r)
	}
	a.apply(t, State{})
	if rs := routes(t, a.ns); len(rs) != 0 {
		t.Fatalf("routes left after an empty State: %v", rs)
	}
}

// TestVXLAN: the same over pier.vxlan, both families over an IPv4
// underlay: one FDB entry per peer, one neighbour per next hop.
func TestVXLAN(t *testing.T) {
	ul := newUnderlay(t)
	a, b := newTestNode(t, ul, 1, ModeVXLAN), newTestNode(t, ul, 2, ModeVXLAN)
	a.apply(t, a.plan(b))
	b.apply(t, b.plan(a))
	for _, to := range []netip.Addr{b.pod4, b.pod6} {
		if err := ping(t, a.pod, to); err != nil {
			t.Fatal(err)
		}
	}
	r := routes(t, a.ns)[b.v6.String()]
	if r.Dev != VXLANDevice || r.Gateway != b.v6.Addr().String() || !strings.Contains(fmt.Sprint(r.Flags), "onlink") {
		t.Fatalf("IPv6 route over vxlan: %+v", r)
	}
	fdb := a.ns.MustRun(t, "bridge", "fdb", "show", "dev", VXLANDevice)
	if strings.Count(fdb, "dst ") != 1 || !strings.Contains(fdb, MACFor(b.ip).String()+" dst "+b.ip.String()) {
		t.Fatalf("want one FDB entry for %s:\n%s", b.ip, fdb)
	}
	neigh := a.ns.MustRun(t, "ip", "neigh", "show", "dev", VXLANDevice, "nud", "permanent")
	if strings.Count(neigh, "\n") != 2 {
		t.Fatalf("want one neighbour per next hop:\n%s", neigh)
	}
	mtu := link(t, a, VXLANDevice).Attrs().MTU
	if mtu != 1450 {
		t.Fatalf("pier.vxlan MTU %d, want 1500 - 50", mtu)
	}

	// The peer goes: its routes, FDB entry and neighbours go.
	a.apply(t, State{})
	if rs := routes(t, a.ns); len(rs) != 0 {
		t.Fatalf("routes left: %v", rs)
	}
	if out := a.ns.MustRun(t, "bridge", "fdb", "show", "dev", VXLANDevice); strings.Contains(out, "dst ") {
		t.Fatalf("FDB entries left:\n%s", out)
	}
	if out := a.ns.MustRun(t, "ip", "neigh", "show", "dev", VXLANDevice, "nud", "permanent"); strings.TrimSpace(out) != "" {
		t.Fatalf("neighbours left:\n%s", out)
	}
}

func link(t *testing.T, n *testNode, name string) netlink.Link {
	t.Helper()
	l, err := n.handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestReconcile: Apply converges from any state and owns only its own:
// a route of another protocol stays, a stale route of Pier's goes, a next
// hop that changed is replaced, a route the kernel cannot hold is left out
// without failing the others.
func TestReconcile(t *testing.T) {
	ul := newUnderlay(t)
	a := newTestNode(t, ul, 1, ModeHostGW)
	a.ns.MustRun(t, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.200", "proto", "static")
	a.ns.MustRun(t, "ip", "route", "add", "10.244.9.0/24", "via", "192.0.2.9", "proto", "80")
	s := State{Routes: []Route{
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("192.0.2.2")},
		{Dst: netip.MustParsePrefix("10.244.3.0/24"), Via: netip.MustParseAddr("192.0.2.3")},
		// Not programmable: an IPv6 range via an IPv4 next hop.
		{Dst: netip.MustParsePrefix("fd00:10:244:3::/64"), Via: netip.MustParseAddr("192.0.2.3")},
	}}
	a.apply(t, s)
	rs := routes(t, a.ns)
	if len(rs) != 2 || rs["10.244.2.0/24"].Gateway != "192.0.2.2" || rs["10.244.3.0/24"].Gateway != "192.0.2.3" {
		t.Fatalf("routes: %v", rs)
	}
	if out := a.ns.MustRun(t, "ip", "route", "show", "198.51.100.0/24"); !strings.Contains(out, "proto static") {
		t.Fatalf("a route of another protocol was touched: %q", out)
	}
	s.Routes[1].Via = netip.MustParseAddr("192.0.2.33")
	a.apply(t, s)
	if g := routes(t, a.ns)["10.244.3.0/24"].Gateway; g != "192.0.2.33" {
		t.Fatalf("next hop not replaced: %s", g)
	}
}

// TestStaleGateway: a range the node once served (its gateway still on
// Pier's bridge) that is now routed to another node loses that address, so
// its connected route cannot capture the other node's traffic; an address
// of the bridge that is no range's gateway stays, and so does the route
// it brings: the range it holds is not routed elsewhere.
func TestStaleGateway(t *testing.T) {
	ul := newUnderlay(t)
	a := newTestNode(t, ul, 1, ModeHostGW)
	a.ns.MustRun(t, "ip", "link", "add", "pier0", "type", "bridge")
	a.ns.MustRun(t, "ip", "link", "set", "pier0", "up")
	a.ns.MustRun(t, "ip", "addr", "add", "10.244.7.1/24", "dev", "pier0")
	a.ns.MustRun(t, "ip", "addr", "add", "10.244.8.5/24", "dev", "pier0") // not a gateway: stays
	err := a.programr.Apply(State{Routes: []Route{
		{Dst: netip.MustParsePrefix("10.244.7.0/24"), Via: netip.MustParseAddr("192.0.2.7")},
		{Dst: netip.MustParsePrefix("10.244.8.0/24"), Via: netip.MustParseAddr("192.0.2.8")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	out := a.ns.MustRun(t, "ip", "-4", "addr", "show", "dev", "pier0")
	if strings.Contains(out, "10.244.7.1/") || !strings.Contains(out, "10.244.8.5/") {
		t.Fatalf("addresses after Apply:\n%s", out)
	}
	if r := routes(t, a.ns)["10.244.7.0/24"]; r.Gateway != "192.0.2.7" {
		t.Fatalf("route to the range now elsewhere: %+v", r)
	}
}

// TestOwnNetworksStay guards the node's own addresses, networks and routes
// against a State (from Node objects, written by many hands): a route that
// holds an address of the node's, overlaps a network of one of its links
// or covers one of its routes is left out and reported, and no address
// outside Pier's bridges is removed — not even one that looks like a pod
// range's gateway (docker0's 172.17.0.1/16 does). A route inside a wider
// route of the node's is what routing is for, and is programmed.
func TestOwnNetworksStay(t *testing.T) {
	ul := newUnderlay(t)
	a := newTestNode(t, ul, 1, ModeHostGW)
	a.ns.MustRun(t, "ip", "link", "add", "docker0", "type", "bridge")
	a.ns.MustRun(t, "ip", "addr", "add", "172.17.0.1/16", "dev", "docker0")
	a.ns.MustRun(t, "ip", "link", "add", "svc0", "type", "bridge")
	a.ns.MustRun(t, "ip", "addr", "add", "10.96.0.10/32", "dev", "svc0") // as kube-proxy's kube-ipvs0 holds service addresses
	a.ns.MustRun(t, "ip", "route", "add", "10.50.1.0/24", "via", "192.0.2.254", "proto", "static")
	a.ns.MustRun(t, "ip", "route", "add", "10.0.0.0/8", "via", "192.0.2.254", "proto", "static")
	refused := []string{"172.17.0.0/16", "172.17.128.0/17", "10.96.0.0/24", "10.50.0.0/16", "192.0.2.128/25"}
	var s State
	for _, d := range refused {
		s.Routes = append(s.Routes, Route{Dst: netip.MustParsePrefix(d), Via: netip.MustParseAddr("192.0.2.2")})
	}
	s.Routes = append(s.Routes, Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("192.0.2.2")})
	err := a.programr.Apply(s)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("Apply: %v, want ErrConflict", err)
	}
	rs := routes(t, a.ns)
	for _, d := range refused {
		if _, ok := rs[d]; ok {
			t.Errorf("route to %s, one of the node's own networks, was programmed", d)
		}
		if !strings.Contains(err.Error(), "route "+d+" via") {
			t.Errorf("the refusal of %s is not reported: %v", d, err)
		}
	}
	if rs["10.244.2.0/24"].Gateway != "192.0.2.2" {
		t.Errorf("the pod range inside the node's 10.0.0.0/8 route is not routed: %v", rs)
	}
	if out := a.ns.MustRun(t, "ip", "-4", "addr", "show", "dev", "docker0"); !strings.Contains(out, "172.17.0.1/16") {
		t.Errorf("docker0 lost its address: %s", out)
	}
	if out := a.ns.MustRun(t, "ip", "route", "show", "10.50.1.0/24"); !strings.Contains(out, "proto static") {
		t.Errorf("the node's static route was replaced: %s", out)
	}
}

// TestVXLANReplacesDevice: a pier.vxlan of another VNI or MAC (left by an
// older configuration) is replaced, and the entries of a peer whose MAC
// changed follow.
func TestVXLANReplacesDevice(t *testing.T) {
	ul := newUnderlay(t)
	a := newTestNode(t, ul, 1, ModeVXLAN)
	a.ns.MustRun(t, "ip", "link", "add", VXLANDevice, "type", "vxlan", "id", "42", "dstport", "8472", "local", a.ip.String())
	peer := Peer{Underlay: netip.MustParseAddr("192.0.2.2"), MAC: MACFor(netip.MustParseAddr("192.0.2.2")),
		NextHops: []netip.Addr{netip.MustParseAddr("10.244.2.0")}}
	s := State{Routes: []Route{{Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("10.244.2.0")}}, Peers: []Peer{peer}}
	a.apply(t, s)
	if v := link(t, a, VXLANDevice).(*netlink.Vxlan); v.VxlanId != VXLANID {
		t.Fatalf("VNI %d", v.VxlanId)
	}
	s.Peers[0].MAC = []byte{0x0a, 0x58, 1, 2, 3, 4}
	a.apply(t, s)
	fdb := a.ns.MustRun(t, "bridge", "fdb", "show", "dev", VXLANDevice)
	if strings.Count(fdb, "dst ") != 1 || !strings.Contains(fdb, "0a:58:01:02:03:04 dst 192.0.2.2") {
		t.Fatalf("FDB after the peer's MAC changed:\n%s", fdb)
	}
	neigh := a.ns.MustRun(t, "ip", "neigh", "show", "dev", VXLANDevice)
	if !strings.Contains(neigh, "10.244.2.0 lladdr 0a:58:01:02:03:04 PERMANENT") {
		t.Fatalf("neighbour after the peer's MAC changed:\n%s", neigh)
	}
}

// TestPeerConflicts guards vxlan peers against one another: two peers
// claiming one MAC, or one underlay address, are both left out of the FDB
// and the neighbours (their traffic goes nowhere rather than to the wrong
// node), with both named in the error, and the other peers stay.
func TestPeerConflicts(t *testing.T) {
	ul := newUnderlay(t)
	a := newTestNode(t, ul, 1, ModeVXLAN)
	ip := netip.MustParseAddr
	peer := func(underlay, mac, hop string) Peer {
		return Peer{Underlay: ip(underlay), MAC: MACFor(ip(mac)), NextHops: []netip.Addr{ip(hop)}}
	}
	s := State{Peers: []Peer{
		peer("192.0.2.2", "192.0.2.2", "10.244.2.0"),
		peer("192.0.2.66", "192.0.2.2", "10.244.66.0"), // 192.0.2.2's MAC
		peer("192.0.2.3", "192.0.2.3", "10.244.3.0"),
		peer("192.0.2.3", "192.0.2.33", "10.244.33.0"), // 192.0.2.3's address
		peer("192.0.2.4", "192.0.2.4", "10.244.4.0"),
	}}
	err := a.programr.Apply(s)
	for _, w := range []string{"MAC " + MACFor(ip("192.0.2.2")).String() + " is claimed by [192.0.2.2 192.0.2.66]", "192.0.2.3 left out: the address is claimed"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Apply: %v; want it to say %q", err, w)
		}
	}
	fdb := a.ns.MustRun(t, "bridge", "fdb", "show", "dev", VXLANDevice)
	if strings.Count(fdb, "dst ") != 1 || !strings.Contains(fdb, MACFor(ip("192.0.2.4")).String()+" dst 192.0.2.4") {
		t.Errorf("FDB: want 192.0.2.4's entry alone:\n%s", fdb)
	}
	neigh := a.ns.MustRun(t, "ip", "neigh", "show", "dev", VXLANDevice, "nud", "permanent")
	if strings.Count(neigh, "lladdr") != 1 || !strings.Contains(neigh, "10.244.4.0 ") {
		t.Errorf("neighbours: want 10.244.4.0's alone:\n%s", neigh)
	}
}
