package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/netpol"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/netpol/netpoltest"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestNetworkPolicyRoutedNDTypes guards isolation against ICMPv6 messages
// of the neighbour discovery types (133-136). The policy chains accept
// them before any policy, since pods on a bridge must resolve each other
// whatever their policies; but they accepted them on every path, so an
// egress-isolated pod could send them, with any payload, to any routed
// destination, and an ingress-isolated pod receive them from anywhere, to
// a raw socket. Neighbour discovery is on-link, with hop limit 255, which
// a routed packet has lost one of before the forward hook. Here x/a
// (deny-all egress) sends type 135 to an outside host, and the outside
// host sends type 136 to y/b (deny-all ingress): neither arrives, while
// the same messages from and to the unisolated x/c do. Neighbour
// discovery over the bridge still works for the isolated pods (the node
// reaches both).
func TestNetworkPolicyRoutedNDTypes(t *testing.T) {
	sb, pods, v6 := newOneNodePolicyNet(t)
	// An outside host behind the node, routed (2001:db8:7::/64).
	outside := testnet.NewNS(t, "pt-out-")
	sb.Node.MustRun(t, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", outside.Name)
	// No duplicate address detection on the link: its link-local
	// addresses are usable at once.
	sb.Node.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.uplink0.accept_dad=0")
	outside.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
	sb.Node.MustRun(t, "ip", "addr", "add", "2001:db8:7::1/64", "dev", "uplink0", "nodad")
	sb.Node.MustRun(t, "ip", "link", "set", "uplink0", "up")
	outside.MustRun(t, "ip", "addr", "add", "2001:db8:7::2/64", "dev", "eth0", "nodad")
	outside.MustRun(t, "ip", "link", "set", "eth0", "up")
	outside.MustRun(t, "ip", "route", "add", "fd00:10:244:7::/64", "via", "2001:db8:7::1")
	outsideAddr := netip.MustParseAddr("2001:db8:7::2")
	// Routing works, both ways, for the pod no policy isolates.
	pods["x/c"].MustRun(t, "ping", "-6", "-c1", "-W2", outsideAddr.String())
	// The node reaches its isolated pods, which needs their neighbour
	// discovery over the bridge.
	sb.Node.MustRun(t, "ping", "-6", "-c1", "-W2", v6["x/a"].String())
	sb.Node.MustRun(t, "ping", "-6", "-c1", "-W2", v6["y/b"].String())

	for _, c := range []struct {
		from, to *testnet.NS
		dst      netip.Addr
		typ      byte
		what     string
		want     bool
	}{
		{pods["x/a"], outside, outsideAddr, 135, "x/a (egress denied) -> outside", false},
		{pods["x/c"], outside, outsideAddr, 135, "x/c -> outside", true},
		{outside, pods["y/b"], v6["y/b"], 136, "outside -> y/b (ingress denied)", false},
		{outside, pods["x/c"], v6["x/c"], 136, "outside -> x/c", true},
	} {
		marker := fmt.Sprintf("nd-%d-%s", c.typ, c.what)
		got := icmpv6Sink(t, c.to, marker)
		sendICMPv6(t, c.from, c.dst, c.typ, marker)
		if arrived := got(time.Second); arrived != c.want {
			t.Errorf("%s: ICMPv6 type %d with a payload arrived=%v, want %v", c.what, c.typ, arrived, c.want)
		}
	}
}

// TestNetworkPolicyGroupTraffic guards ingress isolation against
// broadcast and multicast: a bridge floods them to every port, and the
// ingress check keys on the destination address, which is then no pod's,
// so y/b (deny-all ingress) received the UDP broadcasts and multicasts of
// its neighbours. Which pods a flooded packet reaches cannot be told at
// the forward hook, so no pod's broadcast or multicast goes to the other
// pods (x/a, which no policy isolates, gets none either); the node still
// gets them. With the policy chains emptied, the same packets reach both
// pods: they are ones a host accepts.
func TestNetworkPolicyGroupTraffic(t *testing.T) {
	sb, pods, v6 := newOneNodePolicyNet(t)
	round := func() []string {
		sinks := map[string]func(time.Duration) []udpMsg{}
		for _, name := range []string{"y/b", "x/a"} {
			sinks[name+" v4"] = udpSinkIn(t, pods[name], "udp4", 9999)
			sinks[name+" v6"] = udpSinkIn(t, pods[name], "udp6", 9999)
		}
		node := udpSinkIn(t, sb.Node, "udp4", 9999)
		for _, dst := range []string{"10.244.7.255", "255.255.255.255", "ff02::1"} {
			sendGroupUDP(t, pods["x/c"], v6["x/c"], dst, 9999)
		}
		if got := node(time.Second); len(got) != 2 {
			t.Errorf("the node got %v, want the two IPv4 broadcasts", got)
		}
		var arrived []string
		for name, sink := range sinks {
			for _, m := range sink(100 * time.Millisecond) {
				arrived = append(arrived, name+" got "+m.payload)
			}
		}
		slices.Sort(arrived)
		return arrived
	}
	if got := round(); len(got) > 0 {
		t.Errorf("a pod's broadcast and multicast reached its neighbours: %q", got)
	}
	sb.Node.MustRun(t, "nft", "flush", "chain", "inet", "pier", "np-forward-ingress")
	want := []string{"x/a v4 got 10.244.7.255", "x/a v4 got 255.255.255.255", "x/a v6 got ff02::1",
		"y/b v4 got 10.244.7.255", "y/b v4 got 255.255.255.255", "y/b v6 got ff02::1"}
	if got := round(); !slices.Equal(got, want) {
		t.Errorf("without the policy chain: %q, want %q: the test's packets prove nothing", got, want)
	}
}

// sendGroupUDP sends a UDP datagram to a broadcast or multicast address
// (its own text as payload) from eth0 in ns; to an IPv6 one from src (the
// kernel would pick the link-local address for ff02::/16, whose traffic
// the source check drops anyway).
func sendGroupUDP(t *testing.T, ns *testnet.NS, src netip.Addr, dst string, port int) {
	t.Helper()
	a := netip.MustParseAddr(dst)
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		if a.Is4() {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
				return err
			}
			if err := unix.BindToDevice(fd, "eth0"); err != nil {
				return err
			}
			return unix.Sendto(fd, []byte(dst), 0, &unix.SockaddrInet4{Addr: a.As4(), Port: port})
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: src.As16()}); err != nil {
			return err
		}
		return unix.Sendto(fd, []byte(dst), 0, &unix.SockaddrInet6{Addr: a.As16(), Port: port, ZoneId: uint32(ifi.Index)})
	})
	if err != nil {
		t.Fatalf("send to %s from %s: %v", dst, ns.Name, err)
	}
}

// sendICMPv6 sends an ICMPv6 message of type typ carrying payload to dst
// from ns, with hop limit 255, as neighbour discovery is sent.
func sendICMPv6(t *testing.T, ns *testnet.NS, dst netip.Addr, typ byte, payload string) {
	t.Helper()
	msg := append(make([]byte, 24), payload...) // type, code, checksum (the kernel's), reserved, target
	msg[0] = typ
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 255); err != nil {
			return err
		}
		return unix.Sendto(fd, msg, 0, &unix.SockaddrInet6{Addr: dst.As16()})
	})
	if err != nil {
		t.Fatalf("send ICMPv6 from %s: %v", ns.Name, err)
	}
}

// icmpv6Sink reads ICMPv6 in ns with a raw socket, which gets a copy of
// every message, whatever the kernel's own handling does with it; the
// returned function reports whether one carried marker.
func icmpv6Sink(t *testing.T, ns *testnet.NS, marker string) func(quiet time.Duration) bool {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("ip6:ipv6-icmp", "::")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return func(quiet time.Duration) bool {
		defer pc.Close()
		buf := make([]byte, 1500)
		for {
			_ = pc.SetReadDeadline(time.Now().Add(quiet))
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return false
			}
			if strings.Contains(string(buf[:n]), marker) {
				return true
			}
		}
	}
}

// newOneNodePolicyNet is one node with a dual-stack policy network and an
// engine: pods x/a (egress denied), x/c (no policy) and y/b (ingress
// denied), and their IPv6 addresses.
func newOneNodePolicyNet(t *testing.T) (*testnet.Sandbox, map[string]*testnet.NS, map[string]netip.Addr) {
	t.Helper()
	testnet.RequireRoot(t)
	bin := testnet.Binaries(t)
	sb := testnet.New(t)
	f, err := os.Open(sb.Node.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	engine := netpol.New(netpol.Config{NodeName: "node1", DataPlane: dataplane.New(dataplane.InNetNS(int(f.Fd())))})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{"x", "y"} {
		must(engine.SetNamespace(netpoltest.NamespaceObject(ns, nil)))
	}
	must(engine.Start())
	conf := fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "polnd", "type": "pier", "bridge": "pier-npnd",
  "isGateway": true, "isDefaultGateway": true, "networkPolicy": true,
  "ipam": { "type": "pier-ipam", "dataDir": %q, "ranges": [ [ { "subnet": "10.244.7.0/24" } ], [ { "subnet": "fd00:10:244:7::/64" } ] ] } }`, t.TempDir())
	pods := map[string]*testnet.NS{}
	v6 := map[string]netip.Addr{}
	for _, name := range []string{"x/a", "x/c", "y/b"} {
		ns, pod, _ := strings.Cut(name, "/")
		pods[name] = sb.Container()
		env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + ns + "-" + pod, "CNI_NETNS=" + pods[name].Path, "CNI_IFNAME=eth0",
			"CNI_PATH=" + bin, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + pod}
		r := sb.Exec(filepath.Join(bin, "pier"), env, []byte(conf))
		if r.ExitCode != 0 {
			t.Fatalf("ADD %s: %s %s", name, r.Stdout, r.Stderr)
		}
		var res current.Result
		must(json.Unmarshal([]byte(r.Stdout), &res))
		obj := netpoltest.PodObject(name, "node1", netip.Addr{}, nil)
		for _, ipc := range res.IPs {
			a, _ := netip.AddrFromSlice(ipc.Address.IP)
			obj.Status.PodIPs = append(obj.Status.PodIPs, corev1.PodIP{IP: a.Unmap().String()})
			if a.Unmap().Is6() {
				v6[name] = a
			}
		}
		must(engine.SetPod(obj))
	}
	must(engine.SetPolicy(netpoltest.Policy("x", "a-no-egress", netpoltest.Sel("pod", "a"), networkingv1.PolicyTypeEgress)))
	must(engine.SetPolicy(netpoltest.Policy("y", "b-no-ingress", netpoltest.Sel("pod", "b"), networkingv1.PolicyTypeIngress)))
	return sb, pods, v6
}
