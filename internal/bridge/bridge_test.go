package bridge

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestHostVethName(t *testing.T) {
	a := HostVethName("1234567890", "eth0")
	if a != HostVethName("1234567890", "eth0") {
		t.Fatal("not deterministic")
	}
	if len(a) > 15 || !strings.HasPrefix(a, "veth") {
		t.Fatalf("%q: want veth prefix and at most 15 bytes", a)
	}
	for _, other := range []string{HostVethName("1234567890", "eth1"), HostVethName("1234567891", "eth0"), HostVethName("1234567890e", "th0")} {
		if other == a {
			t.Fatalf("%q collides", a)
		}
	}
}

func TestEnsureBridgeCreateAndReuse(t *testing.T) {
	sb := testnet.New(t)
	cfg := BridgeConfig{Name: "br-test", MTU: 1400, Promisc: true}
	var first, second *netlink.Bridge
	inNode(t, sb, func() (err error) {
		if first, err = EnsureBridge(cfg); err != nil {
			return err
		}
		second, err = EnsureBridge(cfg)
		return err
	})
	l := link(t, sb.Node, "br-test")
	if l.LinkInfo.Kind != "bridge" || l.MTU != 1400 || l.Promisc == 0 || !slices.Contains(l.Flags, "UP") {
		t.Fatalf("bridge: %+v; want kind bridge, mtu 1400, promisc, up", l)
	}
	if first.Index != l.Index || second.Index != l.Index || second.HardwareAddr.String() != l.Address {
		t.Fatalf("returned index %d/%d mac %s; kernel says %d %s", first.Index, second.Index, second.HardwareAddr, l.Index, l.Address)
	}

	// An existing bridge that someone set down and to another MTU is
	// brought back in line.
	sb.Node.MustRun(t, "ip", "link", "set", "br-test", "down", "mtu", "1300")
	inNode(t, sb, func() error { _, err := EnsureBridge(cfg); return err })
	if l := link(t, sb.Node, "br-test"); l.MTU != 1400 || !slices.Contains(l.Flags, "UP") {
		t.Fatalf("after reconcile: %+v", l)
	}
}

// The bridge's MAC is set at creation, so the kernel does not replace it
// with a port's lower MAC as veths come and go.
func TestEnsureBridgeMACStable(t *testing.T) {
	sb := testnet.New(t)
	c := sb.Container()
	var br *netlink.Bridge
	inNode(t, sb, func() (err error) {
		br, err = EnsureBridge(BridgeConfig{Name: "br-test"})
		if err != nil {
			return err
		}
		_, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: "vethlow",
			Bridge: br, MAC: mustMAC(t, "02:00:00:00:00:01")})
		return err
	})
	sb.Node.MustRun(t, "ip", "link", "set", "vethlow", "address", "02:00:00:00:00:00")
	if got := link(t, sb.Node, "br-test").Address; got != br.HardwareAddr.String() {
		t.Fatalf("bridge MAC changed from %s to %s", br.HardwareAddr, got)
	}
}

func TestEnsureBridgeConcurrent(t *testing.T) {
	sb := testnet.New(t)
	cfg := BridgeConfig{Name: "br-race", Gateways: mustPrefixes("10.15.20.1/24", "fd00:15:20::1/64")}
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Go(func() {
			errs[i] = sb.Node.Do(func() error { _, err := EnsureBridge(cfg); return err })
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if names := linkNames(t, sb.Node); !slices.Equal(names, []string{"br-race", "lo"}) {
		t.Fatalf("links %v", names)
	}
	got := sortedPrefixes(globalAddrs(t, link(t, sb.Node, "br-race")))
	if want := []string{"10.15.20.1/24", "fd00:15:20::1/64"}; !slices.Equal(got, want) {
		t.Fatalf("bridge addresses %v, want %v", got, want)
	}
}

func TestEnsureBridgeNotABridge(t *testing.T) {
	sb := testnet.New(t)
	sb.Node.MustRun(t, "ip", "link", "add", "br-test", "type", "veth", "peer", "name", "br-test-p")
	var err error
	inNode(t, sb, func() error { _, err = EnsureBridge(BridgeConfig{Name: "br-test"}); return nil })
	wantErrContains(t, err, "br-test", "veth", "not a bridge")
}

func TestEnsureBridgeGatewayConflict(t *testing.T) {
	sb := testnet.New(t)
	ensure := func(gw string, force bool) (err error) {
		inNode(t, sb, func() error {
			_, err = EnsureBridge(BridgeConfig{Name: "br-test", Gateways: mustPrefixes(gw), ForceAddress: force})
			return nil
		})
		return err
	}
	if err := ensure("10.15.20.1/24", false); err != nil {
		t.Fatal(err)
	}
	if err := ensure("10.15.20.1/24", false); err != nil {
		t.Fatalf("same gateway again: %v", err)
	}
	wantErrContains(t, ensure("10.15.20.254/24", false), "br-test", "10.15.20.1/24", "10.15.20.254/24")
	wantErrContains(t, ensure("10.15.20.1/16", false), "10.15.20.1/24", "10.15.20.1/16")
	// A gateway of another subnet is no conflict.
	if err := ensure("10.16.0.1/24", false); err != nil {
		t.Fatal(err)
	}
	if err := ensure("10.15.20.254/24", true); err != nil {
		t.Fatal(err)
	}
	got := sortedPrefixes(globalAddrs(t, link(t, sb.Node, "br-test")))
	if want := []string{"10.15.20.254/24", "10.16.0.1/24"}; !slices.Equal(got, want) {
		t.Fatalf("after forceAddress: %v, want %v", got, want)
	}
	// The same rules hold for IPv6.
	if err := ensure("fd00:15:20::1/64", false); err != nil {
		t.Fatal(err)
	}
	wantErrContains(t, ensure("fd00:15:20::2/64", false), "fd00:15:20::1/64", "fd00:15:20::2/64")
}

// IPv6 gateways are usable at once: not tentative even with DAD on.
func TestEnsureBridgeDualStack(t *testing.T) {
	sb := testnet.New(t)
	inNode(t, sb, func() error {
		_, err := EnsureBridge(BridgeConfig{Name: "br-test", Gateways: mustPrefixes("10.15.20.1/24", "fd00:15:20::1/64")})
		return err
	})
	l := link(t, sb.Node, "br-test")
	got := sortedPrefixes(globalAddrs(t, l))
	want := []string{"10.15.20.1/24", "fd00:15:20::1/64"}
	if !slices.Equal(got, want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
	for _, a := range l.AddrInfo {
		if a.Tentative && a.Scope != "link" {
			t.Fatalf("%s is tentative", a.Local)
		}
	}
	var have []netip.Prefix
	inNode(t, sb, func() (err error) { have, err = BridgeAddrs("br-test"); return err })
	if got := sortedPrefixes(have); !slices.Equal(got, want) {
		t.Fatalf("BridgeAddrs %v, want %v", got, want)
	}
	inNode(t, sb, func() error {
		if _, err := BridgeAddrs("br-absent"); !errors.Is(err, ErrNotFound) {
			t.Errorf("BridgeAddrs of a missing bridge: %v; want ErrNotFound", err)
		}
		if _, err := BridgePorts("br-absent"); !errors.Is(err, ErrNotFound) {
			t.Errorf("BridgePorts of a missing bridge: %v; want ErrNotFound", err)
		}
		return nil
	})
	if v := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", "net.ipv6.conf.br-test.accept_ra")); v != "0" {
		t.Fatalf("accept_ra on the bridge = %s, want 0", v)
	}
}

func TestEnableForwarding(t *testing.T) {
	sb := testnet.New(t)
	hostV4 := readHostSysctl(t, "net/ipv4/ip_forward")
	hostV6 := readHostSysctl(t, "net/ipv6/conf/all/forwarding")
	sb.Node.MustRun(t, "sysctl", "-w", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
	inNode(t, sb, func() error { return EnableForwarding(true, true) })
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if v := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", k)); v != "1" {
			t.Fatalf("node %s = %s, want 1", k, v)
		}
	}
	inNode(t, sb, func() error { return EnableForwarding(true, true) }) // already 1: no write
	if got := readHostSysctl(t, "net/ipv4/ip_forward"); got != hostV4 {
		t.Fatalf("host ip_forward changed from %s to %s", hostV4, got)
	}
	if got := readHostSysctl(t, "net/ipv6/conf/all/forwarding"); got != hostV6 {
		t.Fatalf("host ipv6 forwarding changed from %s to %s", hostV6, got)
	}
}

// readHostSysctl reads a sysctl of the test process's own (host) namespace.
// Only reads: tests never write the host's settings.
func readHostSysctl(t testing.TB, key string) string {
	t.Helper()
	out, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestErrorsWrapNetlink(t *testing.T) {
	sb := testnet.New(t)
	var err error
	inNode(t, sb, func() error {
		_, err = EnsureBridge(BridgeConfig{Name: "br-test", MTU: 10}) // below the minimum MTU
		return nil
	})
	wantErrContains(t, err, "br-test")
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("%v: want errors.Is EINVAL", err)
	}
	if names := linkNames(t, sb.Node); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("links %v", names)
	}
}

func ExampleHostVethName() {
	fmt.Println(len(HostVethName("1234567890", "eth0")))
	// Output: 15
}
