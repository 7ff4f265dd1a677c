package e2e

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/pier-cni/pier/internal/netpol/netpoltest"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestNetworkPolicySpoofedSource guards egress and ingress isolation
// against a pod that writes another pod's address as its packets' source.
// Pier classifies a packet as a local pod's egress by its source address
// (ip saddr vmap @np-egress4) and nothing on the bridge binds a source
// address to the port it came in on; a pod with NET_RAW (in the default
// capability set of containerd and Docker) can therefore send as its
// neighbour, and its traffic is judged by the neighbour's policies. x/a
// below is isolated for egress with no rule (deny all): the API says no
// connection may leave it. It sends one UDP datagram with x/b's address
// (x/b's egress is open) to y/c on the same node and to y/a on the other
// node; neither may arrive. The same holds for ingress: y/c admits only
// x/b, and x/a, sending as x/b, must not get in either.
func TestNetworkPolicySpoofedSource(t *testing.T) {
	c := newNPCluster(t)
	c.must(c.Apply(netpoltest.Policy("x", "a-deny-egress", netpoltest.Sel("pod", "a"), networkingv1.PolicyTypeEgress)))
	xa, xb := c.pods["x/a"], c.pods["x/b"]
	for _, to := range []string{"y/c", "y/a"} { // node1 (bridged), node2 (routed)
		dst := c.pods[to]
		got := udpSink(t, dst.ns, 9999)
		// x/a's own address: dropped, as it must be (the policy is on).
		sendRawUDP(t, xa.ns, xa.addr, dst.addr, 9999, "own")
		// x/b's address, from x/a.
		sendRawUDP(t, xa.ns, xb.addr, dst.addr, 9999, "spoofed")
		for _, m := range got(2 * time.Second) {
			t.Errorf("%s received %q from %s, sent by x/a, whose egress is denied", to, m.payload, m.from)
		}
	}
	c.must(c.DeletePolicy("x", "a-deny-egress"))
	c.must(c.Apply(netpoltest.In(netpoltest.Policy("y", "c-from-xb", netpoltest.Sel("pod", "c"), networkingv1.PolicyTypeIngress),
		netpoltest.Peers(netpoltest.BothPeer(netpoltest.Sel("ns", "x"), netpoltest.Sel("pod", "b"))))))
	yc := c.pods["y/c"]
	got := udpSink(t, yc.ns, 9998)
	sendRawUDP(t, xa.ns, xa.addr, yc.addr, 9998, "own")
	sendRawUDP(t, xa.ns, xb.addr, yc.addr, 9998, "as x/b")
	for _, m := range got(2 * time.Second) {
		t.Errorf("y/c, which admits only x/b, received %q from %s, sent by x/a", m.payload, m.from)
	}
}

type udpMsg struct {
	from    string
	payload string
}

// udpSink listens on UDP port in ns; the returned function collects what
// arrived until no datagram came for quiet.
func udpSink(t *testing.T, ns *testnet.NS, port int) func(quiet time.Duration) []udpMsg {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port)).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return func(quiet time.Duration) []udpMsg {
		var out []udpMsg
		buf := make([]byte, 1500)
		for {
			_ = pc.SetReadDeadline(time.Now().Add(quiet))
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return out
			}
			out = append(out, udpMsg{from.String(), string(buf[:n])})
		}
	}
}

// sendRawUDP sends one UDP datagram from src (any address, as a raw
// socket with NET_RAW can) to dst:port, inside ns.
func sendRawUDP(t *testing.T, ns *testnet.NS, src, dst netip.Addr, port int, payload string) {
	t.Helper()
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], uint16(port))
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload) // checksum 0: none, which IPv4 allows
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, syscall.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:]) // the kernel fills in the header checksum
	pkt := append(ip, udp...)
	if err := ns.Do(func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return syscall.Sendto(fd, pkt, 0, &syscall.SockaddrInet4{Addr: d4})
	}); err != nil {
		t.Fatalf("send from %s to %s in %s: %v", src, dst, ns.Name, err)
	}
}
