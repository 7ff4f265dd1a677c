package e2e

import (
	"net"
	"net/netip"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/pier-cni/pier/internal/netpol/netpoltest"
	"github.com/pier-cni/pier/internal/routing"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestNetworkPolicyVXLANInjection guards network policy and the source
// address check (ipspoofchk) against a pod that hands its node a VXLAN
// packet. In vxlan mode (pierd --routing vxlan, the manifest's default)
// every node has pier.vxlan, whose UDP socket (port 8472) decapsulates
// whatever reaches any local address, from anyone: a pod's datagram to
// its own node's address is enough, no NET_RAW needed. The inner packet
// then enters the node's forward path as if it came from another node,
// with any source address the pod wrote in it; the source check only sees
// the outer packet (from the pod's own address), and ingress policy judges
// the forged inner source. Here y/c admits only x/c (on node2); x/a (on
// node1, not admitted) sends as x/c through node1's own VTEP, and y/c must
// not receive it. The controls: x/c's real datagram, routed over vxlan,
// arrives; x/a's own and its raw spoofed datagram (source check) do not.
func TestNetworkPolicyVXLANInjection(t *testing.T) {
	c := newNPCluster(t)
	for i, n := range c.nodes {
		other := c.nodes[1-i]
		n.sb.Node.MustRun(t, "ip", "route", "del", other.cidr.String()) // host-gw's route
		vxlanBetween(t, n, other)
	}
	c.must(c.Apply(netpoltest.In(netpoltest.Policy("y", "c-from-xc", netpoltest.Sel("pod", "c"), networkingv1.PolicyTypeIngress),
		netpoltest.Peers(netpoltest.BothPeer(netpoltest.Sel("ns", "x"), netpoltest.Sel("pod", "c"))))))
	xa, xc, yc := c.pods["x/a"], c.pods["x/c"], c.pods["y/c"]
	got := udpSink(t, yc.ns, 9997)

	// Control: x/c's own datagram crosses the vxlan and is admitted.
	if err := xc.ns.Do(func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(yc.addr, 9997)))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("x/c itself"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sendRawUDP(t, xa.ns, xa.addr, yc.addr, 9997, "x/a itself")
	sendRawUDP(t, xa.ns, xc.addr, yc.addr, 9997, "x/a as x/c, raw")
	node1 := netip.MustParseAddr(c.nodes[0].ip)
	inner := testnet.IPv4UDP(xc.addr, yc.addr, 40001, 9997, "x/a as x/c, through node1's vxlan")
	frame := testnet.VXLAN(routing.VXLANID, routing.MACFor(netip.MustParseAddr(c.nodes[1].ip)), routing.MACFor(node1), inner)
	if err := xa.ns.Do(func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(node1, routing.VXLANPort)))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write(frame)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	seen := false
	for _, m := range got(2 * time.Second) {
		if m.payload == "x/c itself" {
			seen = true
			continue
		}
		t.Errorf("y/c, which admits only x/c, received %q from %s, sent by x/a", m.payload, m.from)
	}
	if !seen {
		t.Fatal("control: x/c's own datagram over vxlan did not arrive")
	}
}

// vxlanBetween programs n's pier.vxlan towards other, as pierd's route
// agent does in vxlan mode (the neighbour key is the range's address).
func vxlanBetween(t *testing.T, n, other *npNode) {
	t.Helper()
	oip := netip.MustParseAddr(other.ip)
	p := &routing.Programmer{Mode: routing.ModeVXLAN, VTEP: netip.MustParseAddr(n.ip), Bridges: []string{"pier-np0"}, NetNS: n.sb.Node.Path}
	if err := p.Apply(routing.State{
		Routes: []routing.Route{{Dst: other.cidr, Via: other.cidr.Addr()}},
		Peers:  []routing.Peer{{Underlay: oip, MAC: routing.MACFor(oip), NextHops: []netip.Addr{other.cidr.Addr()}}},
	}); err != nil {
		t.Fatal(err)
	}
}
