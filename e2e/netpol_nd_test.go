package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
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
