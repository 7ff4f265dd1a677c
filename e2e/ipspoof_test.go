package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

func srcConf(dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "srcnet", "type": "pier", "bridge": "pier-src",
  "isGateway": true, "ipspoofchk": true,
  "ipam": {"type": "pier-ipam", "dataDir": %q,
           "ranges": [[{"subnet": "10.46.0.0/24"}], [{"subnet": "fd00:46::/64"}]]}}`, dataDir)
}

// srcHost is one container of the source check tests.
type srcHost struct {
	attachment
	v4, v6 netip.Addr
	mac    net.HardwareAddr
	result string
}

func addSrcHost(t *testing.T, n *node, id, conf string) *srcHost {
	t.Helper()
	h := &srcHost{attachment: n.container(id)}
	h.result = strings.TrimSpace(n.mustAdd(h.attachment, conf))
	var res current.Result
	if err := json.Unmarshal([]byte(h.result), &res); err != nil {
		t.Fatal(err)
	}
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		if a = a.Unmap(); a.Is4() {
			h.v4 = a
		} else {
			h.v6 = a
		}
	}
	for _, i := range res.Interfaces {
		if i.Sandbox != "" {
			h.mac, _ = net.ParseMAC(i.Mac)
		}
	}
	if !h.v4.IsValid() || !h.v6.IsValid() || h.mac == nil {
		t.Fatalf("ADD %s: want an IPv4 and an IPv6 address and a MAC: %s", id, h.result)
	}
	return h
}

// TestSourceAddressCheck: with "ipspoofchk", a container sends only from
// its own addresses. Forged IPv4 and IPv6 sources, a gratuitous ARP and a
// neighbour solicitation claiming the neighbour's address, and a VLAN
// tagged frame all fail to arrive (or to change the node's neighbour
// table), while the container's own traffic, neighbour discovery and DHCP
// discovery from 0.0.0.0 pass. Then the same forged frames, with chain
// ipspoof emptied, do arrive: the frames are ones a host accepts, and the
// check is what stopped them. CHECK verifies the check, DEL removes it.
func TestSourceAddressCheck(t *testing.T) {
	n := newNode(t)
	conf := srcConf(n.dataDir)
	a, v := addSrcHost(t, n, "attacker", conf), addSrcHost(t, n, "victim", conf)

	// Own traffic, with ARP and neighbour discovery, passes.
	a.ns.MustRun(t, "ping", "-c1", "-W2", v.v4.String())
	a.ns.MustRun(t, "ping", "-6", "-c1", "-W2", v.v6.String())
	n.sb.Node.MustRun(t, "ping", "-c1", "-W2", v.v4.String())
	n.sb.Node.MustRun(t, "ping", "-6", "-c1", "-W2", v.v6.String())
	dhcp := udpSinkIn(t, n.sb.Node, "udp4", 67)
	sendFrame(t, a.ns, ether(broadcastMAC, a.mac, unix.ETH_P_IP, testnet.IPv4UDP(netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), 68, 67, "discover")))
	if got := dhcp(time.Second); len(got) != 1 {
		t.Errorf("the node received %d DHCP discoveries from 0.0.0.0, want 1", len(got))
	}

	forged := func() (arrived []string) {
		sink4, sink6 := udpSinkIn(t, v.ns, "udp4", 9000), udpSinkIn(t, v.ns, "udp6", 9000)
		tagged := frameSink(t, v.ns, "tagged")
		spoof4, spoof6 := netip.MustParseAddr("10.46.0.99"), netip.MustParseAddr("fd00:46::99")
		sendFrame(t, a.ns, ether(v.mac, a.mac, unix.ETH_P_IP, testnet.IPv4UDP(a.v4, v.v4, 40000, 9000, "own4")))
		sendFrame(t, a.ns, ether(v.mac, a.mac, unix.ETH_P_IP, testnet.IPv4UDP(spoof4, v.v4, 40000, 9000, "forged4")))
		sendFrame(t, a.ns, ether(v.mac, a.mac, unix.ETH_P_IPV6, ipv6UDP(spoof6, v.v6, 40000, 9000, "forged6")))
		sendFrame(t, a.ns, ether(v.mac, a.mac, unix.ETH_P_IPV6, ipv6UDP(a.v6, v.v6, 40000, 9000, "own6")))
		sendFrame(t, a.ns, vlanTagged(ether(v.mac, a.mac, unix.ETH_P_IP, testnet.IPv4UDP(netip.MustParseAddr("10.47.0.2"), netip.MustParseAddr("10.47.0.3"), 40000, 9000, "tagged")), 7))
		// The node's entry for the victim, just refreshed, against a
		// gratuitous ARP that claims the victim's address for the
		// attacker's MAC (which overrides an entry at once, where a reply
		// may wait for the entry's lock time).
		n.sb.Node.MustRun(t, "ping", "-c1", "-W2", v.v4.String())
		sendFrame(t, a.ns, ether(broadcastMAC, a.mac, unix.ETH_P_ARP, gratuitousARP(a.mac, v.v4)))
		// Neighbour solicitations from the victim's address (which make
		// the receiver note "the victim is at the sender's MAC").
		sendFrame(t, a.ns, ether(ipv6MulticastMAC, a.mac, unix.ETH_P_IPV6, neighbourSolicit(v.v6, netip.MustParseAddr("fd00:46::1"), a.mac)))
		for _, m := range append(sink4(time.Second), sink6(200*time.Millisecond)...) {
			arrived = append(arrived, m.payload)
		}
		if tagged() {
			arrived = append(arrived, "tagged")
		}
		for _, addr := range []netip.Addr{v.v4, v.v6} {
			if mac := neighMAC(t, n.sb.Node, addr, "pier-src"); mac == a.mac.String() {
				arrived = append(arrived, "the node's neighbour entry for "+addr.String())
			}
		}
		n.sb.Node.MustRun(t, "ip", "neigh", "flush", "dev", "pier-src")
		slices.Sort(arrived)
		return arrived
	}
	if got, want := forged(), []string{"own4", "own6"}; !slices.Equal(got, want) {
		t.Errorf("with the check, the victim and the node got %q, want only %q", got, want)
	}

	if r := n.call("CHECK", a.attachment, withPrevResult(conf, a.result)); r.ExitCode != 0 {
		t.Errorf("CHECK: exit %d: %s", r.ExitCode, r.Stdout)
	}
	port := veth.HostName("attacker", "eth0")
	n.sb.Node.MustRun(t, "nft", "delete", "element", "bridge", "pier", "ipspoof-allowed6", fmt.Sprintf("{ %q . %s }", port, a.v6))
	r := n.call("CHECK", a.attachment, withPrevResult(conf, a.result))
	if r.ExitCode == 0 || !strings.Contains(r.Stdout, "may not send from "+a.v6.String()) {
		t.Errorf("CHECK with the IPv6 pair gone: exit %d: %s", r.ExitCode, r.Stdout)
	}

	n.sb.Node.MustRun(t, "nft", "flush", "chain", "bridge", "pier", "ipspoof")
	want := []string{"forged4", "forged6", "own4", "own6", "tagged",
		"the node's neighbour entry for " + v.v4.String(), "the node's neighbour entry for " + v.v6.String()}
	if got := forged(); !slices.Equal(got, want) {
		t.Errorf("without the check's rules, the forged frames prove nothing: got %q, want %q", got, want)
	}

	n.mustDel(a.attachment, conf)
	if left := sourceElements(t, n.sb.Node, port); len(left) > 0 {
		t.Errorf("DEL left the source check elements %v", left)
	}
	if left := sourceElements(t, n.sb.Node, veth.HostName("victim", "eth0")); len(left) != 3 {
		t.Errorf("the victim's elements after the attacker's DEL: %v, want its port and two addresses", left)
	}
	n.mustDel(v.attachment, conf)
}

// TestSourceCheckOnlyWhereAsked: a network without "ipspoofchk" (nor
// networkPolicy) binds nothing, and "ipspoofchk": false with
// networkPolicy is refused with code 2.
func TestSourceCheckOnlyWhereAsked(t *testing.T) {
	n := newNode(t)
	conf := strings.Replace(srcConf(n.dataDir), `"ipspoofchk": true`, `"ipMasq": true`, 1)
	c := n.container("plain")
	n.mustAdd(c, conf)
	if left := sourceElements(t, n.sb.Node, veth.HostName("plain", "eth0")); len(left) > 0 {
		t.Errorf("a network without ipspoofchk bound %v", left)
	}
	refused := strings.Replace(srcConf(n.dataDir), `"ipspoofchk": true`, `"ipspoofchk": false, "networkPolicy": true`, 1)
	msg := cniError(t, n.call("ADD", n.container("refused"), refused), 2)
	if !strings.Contains(msg, "ipspoofchk") {
		t.Errorf("error does not name the key: %s", msg)
	}
	n.mustDel(c, conf)
}

// TestSourceCheckRestoreAndGC: the source check comes back from the
// attachments' records after a flushed ruleset (the next ADD restores the
// network), and GC removes the elements of an attachment it is not told
// is valid.
func TestSourceCheckRestoreAndGC(t *testing.T) {
	n := newNode(t)
	conf := srcConf(n.dataDir)
	first := addSrcHost(t, n, "first", conf)
	n.sb.Node.MustRun(t, "nft", "flush", "ruleset")
	second := addSrcHost(t, n, "second", conf)
	for _, h := range []*srcHost{first, second} {
		if got := sourceElements(t, n.sb.Node, veth.HostName(h.id, "eth0")); len(got) != 3 {
			t.Errorf("%s after a flush and another ADD: %v, want its port and two addresses", h.id, got)
		}
	}
	gc := withValidAttachments(strings.Replace(conf, `"1.0.0"`, `"1.1.0"`, 1), second.attachment)
	if r := n.call("GC", attachment{}, gc); r.ExitCode != 0 {
		t.Fatalf("GC: exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	if got := sourceElements(t, n.sb.Node, veth.HostName("first", "eth0")); len(got) > 0 {
		t.Errorf("GC left the invalid attachment's elements %v", got)
	}
	if got := sourceElements(t, n.sb.Node, veth.HostName("second", "eth0")); len(got) != 3 {
		t.Errorf("GC took the valid attachment's elements: %v", got)
	}
	n.mustDel(second.attachment, conf)
}

// sourceElements lists the source check elements of port in ns.
func sourceElements(t *testing.T, ns *testnet.NS, port string) []string {
	t.Helper()
	f, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	all, err := nat.ListNodeElements(nat.InNetNS(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range all.Sources {
		if e.Port == port {
			out = append(out, fmt.Sprintf("%s %v (%s)", e.Port, e.Addr, e.Owner))
		}
	}
	return out
}

// neighMAC is the node's neighbour entry's MAC for addr on dev, "" for none.
func neighMAC(t *testing.T, ns *testnet.NS, addr netip.Addr, dev string) string {
	t.Helper()
	out := ipJSON[[]struct {
		LLAddr string `json:"lladdr"`
	}](t, ns, "neigh", "show", addr.String(), "dev", dev)
	if len(out) == 0 {
		return ""
	}
	return out[0].LLAddr
}

// udpSinkIn listens on a UDP port ("udp4" or "udp6") in ns; the returned
// function collects what arrived until nothing came for quiet, and closes
// the socket.
func udpSinkIn(t *testing.T, ns *testnet.NS, network string, port int) func(quiet time.Duration) []udpMsg {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket(network, fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return func(quiet time.Duration) []udpMsg {
		defer pc.Close()
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

// frameSink captures every frame reaching eth0 in ns; the returned
// function reports whether one carried marker, and stops the capture.
// (A VLAN device would need the 8021q module, which a test must not load
// into the host's kernel.)
func frameSink(t *testing.T, ns *testnet.NS, marker string) func() bool {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatalf("capture in %s: %v", ns.Name, err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			unix.Close(fd)
		}
	})
	return func() bool {
		defer func() { closed = true; unix.Close(fd) }()
		tv := unix.NsecToTimeval((300 * time.Millisecond).Nanoseconds())
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		buf := make([]byte, 2048)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return false
			}
			if strings.Contains(string(buf[:n]), marker) {
				return true
			}
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Frames, built whole so the sender can forge any field.

var (
	broadcastMAC     = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	ipv6MulticastMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1} // ff02::1
)

func ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	f := append(append(slices.Clone(dst), src...), byte(typ>>8), byte(typ))
	return append(f, payload...)
}

// vlanTagged inserts an 802.1Q tag after the frame's MAC addresses.
func vlanTagged(frame []byte, vid uint16) []byte {
	tag := []byte{0x81, 0x00, byte(vid >> 8), byte(vid)}
	return slices.Concat(frame[:12], tag, frame[12:])
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func udp(sport, dport uint16, payload string) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	return u
}

// ipv6Packet wraps an upper-layer message of protocol proto, whose
// checksum is at csumAt, in an IPv6 header, filling the checksum.
func ipv6Packet(src, dst netip.Addr, proto byte, hops byte, msg []byte, csumAt int) []byte {
	s, d := src.As16(), dst.As16()
	pseudo := slices.Concat(s[:], d[:], binary.BigEndian.AppendUint32(nil, uint32(len(msg))), []byte{0, 0, 0, proto})
	binary.BigEndian.PutUint16(msg[csumAt:], checksum(slices.Concat(pseudo, msg), 0))
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(msg)))
	ip[6], ip[7] = proto, hops
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(ip, msg...)
}

func ipv6UDP(src, dst netip.Addr, sport, dport uint16, payload string) []byte {
	return ipv6Packet(src, dst, unix.IPPROTO_UDP, 64, udp(sport, dport, payload), 6)
}

// neighbourSolicit asks for target from src, whose link-layer address it
// says is mac, to all nodes (a receiver that has target notes src at mac).
func neighbourSolicit(src, target netip.Addr, mac net.HardwareAddr) []byte {
	msg := make([]byte, 24+8)
	msg[0] = 135
	t := target.As16()
	copy(msg[8:], t[:])
	msg[24], msg[25] = 1, 1 // source link-layer address option
	copy(msg[26:], mac)
	return ipv6Packet(src, netip.MustParseAddr("ff02::1"), unix.IPPROTO_ICMPV6, 255, msg, 2)
}

// gratuitousARP announces "ip is at mac" to everyone: a request whose
// sender and target address are both ip.
func gratuitousARP(mac net.HardwareAddr, ip netip.Addr) []byte {
	p := []byte{0, 1, 0x08, 0x00, 6, 4, 0, 1}
	a := ip.As4()
	return slices.Concat(p, mac, a[:], make([]byte, 6), a[:])
}

// sendFrame writes one Ethernet frame to eth0 in ns.
func sendFrame(t *testing.T, ns *testnet.NS, frame []byte) {
	t.Helper()
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6})
	})
	if err != nil {
		t.Fatalf("send frame in %s: %v", ns.Name, err)
	}
}

// TestSourceCheckMeasure (PIER_MEASURE=1, reported, never asserted): the
// ADD and DEL cost of the source check, as whole plugin processes with
// ipMasq on (so that both variants send their one nftables batch), the
// two variants taking turns on one node with 100 containers on each
// bridge already; and iperf3 between two checked containers with their
// ports checked and not, in alternating rounds.
func TestSourceCheckMeasure(t *testing.T) {
	if os.Getenv("PIER_MEASURE") == "" {
		t.Skip("measurements: set PIER_MEASURE=1")
	}
	n := newNode(t)
	confs := map[string]string{}
	for i, v := range []string{"off", "on"} {
		conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "src%s", "type": "pier", "bridge": "pier-src%s", "isGateway": true, "ipMasq": true,
  "ipam": {"type": "pier-ipam", "dataDir": %q, "subnet": "10.%d.0.0/16"}}`, v, v, n.dataDir, 60+i)
		if v == "on" {
			conf = strings.Replace(conf, `"ipMasq": true`, `"ipMasq": true, "ipspoofchk": true`, 1)
		}
		confs[v] = conf
	}
	for k := range 100 {
		for v, conf := range confs {
			n.mustAdd(n.container(fmt.Sprintf("pre-%s-%d", v, k)), conf)
		}
	}
	adds, dels := map[string][]time.Duration{}, map[string][]time.Duration{}
	var made []struct {
		v string
		a attachment
	}
	for k := range 31 {
		for _, v := range []string{"off", "on"} {
			a := n.container(fmt.Sprintf("m-%s-%d", v, k))
			start := time.Now()
			n.mustAdd(a, confs[v])
			if k > 0 {
				adds[v] = append(adds[v], time.Since(start))
			}
			made = append(made, struct {
				v string
				a attachment
			}{v, a})
		}
	}
	for _, m := range made {
		start := time.Now()
		n.mustDel(m.a, confs[m.v])
		dels[m.v] = append(dels[m.v], time.Since(start))
	}
	fmt.Printf("source check: ADD median off %s, on %s (%.2fx); DEL median off %s, on %s (%.2fx); 100 containers per bridge, 30 ADDs each, interleaved\n",
		median(adds["off"]), median(adds["on"]), ratio(adds["on"], adds["off"]), median(dels["off"]), median(dels["on"]), ratio(dels["on"], dels["off"]))

	srv, cli := n.container("iperf-srv"), n.container("iperf-cli")
	var res current.Result
	if err := json.Unmarshal([]byte(n.mustAdd(srv, confs["on"])), &res); err != nil {
		t.Fatal(err)
	}
	n.mustAdd(cli, confs["on"])
	cmd := exec.Command("iperf3", "-s", "-p", "8000")
	if err := testnet.StartIn(srv.ns.Path, cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killWait(cmd) })
	srvAddr := res.IPs[0].Address.IP.String()
	ports := fmt.Sprintf("{ %q, %q }", veth.HostName("iperf-srv", "eth0"), veth.HostName("iperf-cli", "eth0"))
	var on, off []float64
	for range 5 {
		on = append(on, iperfGbits(t, cli.ns, srvAddr))
		n.sb.Node.MustRun(t, "nft", "delete", "element", "bridge", "pier", "ipspoof-ports", ports)
		off = append(off, iperfGbits(t, cli.ns, srvAddr))
		n.sb.Node.MustRun(t, "nft", "add", "element", "bridge", "pier", "ipspoof-ports", ports)
	}
	slices.Sort(on)
	slices.Sort(off)
	fmt.Printf("source check: iperf3 Gbit/s between two containers of one bridge, median (range) of 5 alternating rounds: checked %.1f (%.1f-%.1f), not checked %.1f (%.1f-%.1f)\n",
		on[2], on[0], on[4], off[2], off[0], off[4])
}

// iperfGbits is a 3 s TCP iperf3 run from ns to addr:8000, in Gbit/s.
func iperfGbits(t *testing.T, ns *testnet.NS, addr string) float64 {
	var last string
	for range 20 {
		out, err := ns.Run("iperf3", "-c", addr, "-p", "8000", "-t", "3", "-J")
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err == nil && json.Unmarshal([]byte(out), &r) == nil && r.End.SumReceived.BitsPerSecond > 0 {
			return r.End.SumReceived.BitsPerSecond / 1e9
		}
		last = out
		time.Sleep(100 * time.Millisecond) // the server takes one client at a time
	}
	t.Fatalf("iperf3 to %s: %s", addr, last)
	return 0
}
