package routing

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestVXLANGuard guards the overlay against pods that write VXLAN
// themselves. pier.vxlan decapsulates any datagram to port 8472 of any of
// the node's addresses, and the inner packet, with whatever source its
// sender wrote, is then forwarded as if another node had sent it. A pod
// (here a's) sends one to its own node's VTEP, and one to b's VTEP through
// a node that masquerades it to its own address (a source b trusts); the
// inner packets (forged as from b's pod, and from a's own pod to b's
// pod) must not be delivered, while the real overlay traffic sent after
// them is. The guard then survives a flushed ruleset (RestoreGuard) and
// follows the peers.
func TestVXLANGuard(t *testing.T) {
	ul := newUnderlay(t)
	a, b := newTestNode(t, ul, 1, ModeVXLAN), newTestNode(t, ul, 2, ModeVXLAN)
	a.apply(t, a.plan(b))
	b.apply(t, b.plan(a))
	// a masquerades what leaves by the underlay, as a node does for its
	// pods' traffic out of the cluster.
	a.ns.MustRun(t, "nft", "add table ip t; add chain ip t post { type nat hook postrouting priority 100; }; add rule ip t post oifname ul0 masquerade")

	const port = 9999
	atA, atB := udpSinkAt(t, a.pod, port), udpSinkAt(t, b.pod, port)
	forged := testnet.VXLAN(VXLANID, MACFor(b.ip), MACFor(a.ip), testnet.IPv4UDP(b.pod4, a.pod4, 40001, uint16(port), "forged, through a's own VTEP"))
	sendUDP(t, a.pod, netip.AddrPortFrom(a.ip, VXLANPort), forged)
	forged = testnet.VXLAN(VXLANID, MACFor(a.ip), MACFor(b.ip), testnet.IPv4UDP(a.pod4, b.pod4, 40001, uint16(port), "forged, through b's VTEP"))
	sendUDP(t, a.pod, netip.AddrPortFrom(b.ip, VXLANPort), forged)
	sendUDP(t, b.pod, netip.AddrPortFrom(a.pod4, port), []byte("real, b to a"))
	sendUDP(t, a.pod, netip.AddrPortFrom(b.pod4, port), []byte("real, a to b"))
	for name, got := range map[string][]string{"a's pod": atA("real, b to a"), "b's pod": atB("real, a to b")} {
		for _, m := range got {
			if strings.HasPrefix(m, "forged") {
				t.Errorf("%s received a datagram a pod encapsulated itself: %q", name, m)
			}
		}
	}

	a.ns.MustRun(t, "nft", "flush", "ruleset")
	if err := a.programr.RestoreGuard(); err != nil {
		t.Fatal(err)
	}
	if got := guardPeers(t, a); !slices.Equal(got, []string{b.ip.String()}) {
		t.Fatalf("after a flush and RestoreGuard: peers %v, want b's", got)
	}
	if n := strings.Count(a.ns.MustRun(t, "nft", "list", "chain", "inet", "pier", GuardInputChain), "drop"); n != 3 {
		t.Fatalf("after a flush and RestoreGuard: %d drops in %s, want 3", n, GuardInputChain)
	}
	a.apply(t, State{})
	if got := guardPeers(t, a); len(got) != 0 {
		t.Fatalf("peers left once no peer is wanted: %v", got)
	}
}

// guardPeers lists the IPv4 peer set of n's guard.
func guardPeers(t *testing.T, n *testNode) []string {
	t.Helper()
	var out struct {
		Nftables []struct {
			Set *struct {
				Elem []string `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(n.ns.MustRun(t, "nft", "-j", "list", "set", "inet", "pier", GuardPeers4)), &out); err != nil {
		t.Fatal(err)
	}
	var peers []string
	for _, o := range out.Nftables {
		if o.Set != nil {
			peers = append(peers, o.Set.Elem...)
		}
	}
	return peers
}

// udpSinkAt listens on UDP port in ns; the returned function collects what
// arrives until a datagram with last as its payload (which the caller
// sends after the others) and returns every payload before it. Datagrams
// dropped on the way never arrive: waiting for the last one, not for a
// time, decides that they did not.
func udpSinkAt(t *testing.T, ns *testnet.NS, port int) func(last string) []string {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return func(last string) []string {
		var got []string
		buf := make([]byte, 2000)
		// A deadline only so that a broken overlay fails instead of hanging.
		_ = pc.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("waiting for %q in %s: %v (got %q)", last, ns.Name, err, got)
			}
			if string(buf[:n]) == last {
				return got
			}
			got = append(got, string(buf[:n]))
		}
	}
}

// sendUDP sends one datagram from ns to dst with an ordinary socket: what
// any pod may do.
func sendUDP(t *testing.T, ns *testnet.NS, dst netip.AddrPort, payload []byte) {
	t.Helper()
	if err := ns.Do(func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write(payload)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
