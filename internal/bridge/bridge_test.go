package bridge

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

func TestEnsureCreateAndReuse(t *testing.T) {
	sb := testnet.New(t)
	cfg := Config{Name: "br-test", MTU: 1400, Promisc: true}
	var first, second *netlink.Bridge
	sb.MustDo(t, func() (err error) {
		if first, _, err = Ensure(cfg); err != nil {
			return err
		}
		second, _, err = Ensure(cfg)
		return err
	})
	l := sb.Node.Link(t, "br-test")
	if l.LinkInfo.Kind != "bridge" || l.MTU != 1400 || l.Promisc == 0 || !slices.Contains(l.Flags, "UP") {
		t.Fatalf("bridge: %+v; want kind bridge, mtu 1400, promisc, up", l)
	}
	if first.Index != l.Index || second.Index != l.Index || second.HardwareAddr.String() != l.Address {
		t.Fatalf("returned index %d/%d mac %s; kernel says %d %s", first.Index, second.Index, second.HardwareAddr, l.Index, l.Address)
	}

	// An existing bridge that someone set down and to another MTU is
	// brought back in line.
	sb.Node.MustRun(t, "ip", "link", "set", "br-test", "down", "mtu", "1300")
	sb.MustDo(t, func() error { _, _, err := Ensure(cfg); return err })
	if l := sb.Node.Link(t, "br-test"); l.MTU != 1400 || !slices.Contains(l.Flags, "UP") {
		t.Fatalf("after reconcile: %+v", l)
	}
}

// The bridge's MAC is set at creation, so the kernel does not replace it
// with a port's lower MAC as veths come and go.
func TestEnsureMACStable(t *testing.T) {
	sb := testnet.New(t)
	c := sb.Container()
	br := ensure(t, sb, Config{Name: "br-test"})
	sb.MustDo(t, func() error {
		_, err := veth.Create(veth.Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: "vethlow",
			Bridge: br, MAC: mustMAC(t, "02:00:00:00:00:01")})
		return err
	})
	sb.Node.MustRun(t, "ip", "link", "set", "vethlow", "address", "02:00:00:00:00:00")
	if got := sb.Node.Link(t, "br-test").Address; got != br.HardwareAddr.String() {
		t.Fatalf("bridge MAC changed from %s to %s", br.HardwareAddr, got)
	}
}

func TestEnsureConcurrent(t *testing.T) {
	sb := testnet.New(t)
	cfg := Config{Name: "br-race", Gateways: testnet.Prefixes("10.15.20.1/24", "fd00:15:20::1/64")}
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Go(func() {
			errs[i] = sb.Node.Do(func() error { _, _, err := Ensure(cfg); return err })
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if names := sb.Node.LinkNames(t); !slices.Equal(names, []string{"br-race", "lo"}) {
		t.Fatalf("links %v", names)
	}
	got := testnet.SortedStrings(sb.Node.Link(t, "br-race").GlobalAddrs())
	if want := []string{"10.15.20.1/24", "fd00:15:20::1/64"}; !slices.Equal(got, want) {
		t.Fatalf("bridge addresses %v, want %v", got, want)
	}
}

func TestEnsureNotABridge(t *testing.T) {
	sb := testnet.New(t)
	sb.Node.MustRun(t, "ip", "link", "add", "br-test", "type", "veth", "peer", "name", "br-test-p")
	var err error
	sb.MustDo(t, func() error { _, _, err = Ensure(Config{Name: "br-test"}); return nil })
	testnet.WantErrContains(t, err, "br-test", "veth", "not a bridge")
}

func TestEnsureGatewayConflict(t *testing.T) {
	sb := testnet.New(t)
	ensure := func(gw string, force bool) (err error) {
		sb.MustDo(t, func() error {
			_, _, err = Ensure(Config{Name: "br-test", Gateways: testnet.Prefixes(gw), ForceAddress: force})
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
	testnet.WantErrContains(t, ensure("10.15.20.254/24", false), "br-test", "10.15.20.1/24", "10.15.20.254/24")
	testnet.WantErrContains(t, ensure("10.15.20.1/16", false), "10.15.20.1/24", "10.15.20.1/16")
	// A gateway of another subnet is no conflict.
	if err := ensure("10.16.0.1/24", false); err != nil {
		t.Fatal(err)
	}
	if err := ensure("10.15.20.254/24", true); err != nil {
		t.Fatal(err)
	}
	got := testnet.SortedStrings(sb.Node.Link(t, "br-test").GlobalAddrs())
	if want := []string{"10.15.20.254/24", "10.16.0.1/24"}; !slices.Equal(got, want) {
		t.Fatalf("after forceAddress: %v, want %v", got, want)
	}
	// The same rules hold for IPv6.
	if err := ensure("fd00:15:20::1/64", false); err != nil {
		t.Fatal(err)
	}
	testnet.WantErrContains(t, ensure("fd00:15:20::2/64", false), "fd00:15:20::1/64", "fd00:15:20::2/64")
}

// IPv6 gateways are usable at once: not tentative even with DAD on.
func TestEnsureDualStack(t *testing.T) {
	sb := testnet.New(t)
	ensure(t, sb, Config{Name: "br-test", Gateways: testnet.Prefixes("10.15.20.1/24", "fd00:15:20::1/64")})
	l := sb.Node.Link(t, "br-test")
	got := testnet.SortedStrings(l.GlobalAddrs())
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
	sb.MustDo(t, func() (err error) { have, err = Addrs("br-test"); return err })
	if got := testnet.SortedStrings(have); !slices.Equal(got, want) {
		t.Fatalf("Addrs %v, want %v", got, want)
	}
	sb.MustDo(t, func() error {
		if _, err := Addrs("br-absent"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Addrs of a missing bridge: %v; want ErrNotFound", err)
		}
		if _, err := Ports("br-absent"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Ports of a missing bridge: %v; want ErrNotFound", err)
		}
		return nil
	})
	if v := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", "net.ipv6.conf.br-test.accept_ra")); v != "0" {
		t.Fatalf("accept_ra on the bridge = %s, want 0", v)
	}
}

func TestErrorsWrapNetlink(t *testing.T) {
	sb := testnet.New(t)
	var err error
	sb.MustDo(t, func() error {
		_, _, err = Ensure(Config{Name: "br-test", MTU: 10}) // below the minimum MTU
		return nil
	})
	testnet.WantErrContains(t, err, "br-test")
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("%v: want errors.Is EINVAL", err)
	}
	if names := sb.Node.LinkNames(t); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("links %v", names)
	}
}

// TestEnsureReportsCreation: Ensure says that it created the bridge only
// the first time.
func TestEnsureReportsCreation(t *testing.T) {
	sb := testnet.New(t)
	var first, second bool
	sb.MustDo(t, func() (err error) {
		if _, first, err = Ensure(Config{Name: "br-new"}); err != nil {
			return err
		}
		_, second, err = Ensure(Config{Name: "br-new"})
		return err
	})
	if !first || second {
		t.Errorf("created: first call %v, second %v; want true, false", first, second)
	}
}

// TestHardening: DisableRA fixes a bridge someone else made.
func TestHardening(t *testing.T) {
	sb := testnet.New(t)
	sb.Node.MustRun(t, "ip", "link", "add", "foreign0", "type", "bridge")
	sb.MustDo(t, func() error { return DisableRA("foreign0") })
	for key, want := range map[string]string{
		"net.ipv6.conf.foreign0.accept_ra": "0",
	} {
		if got := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", key)); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	mac, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// gw4 and gw6 are the sandbox network's gateways.
var (
	gw4 = netip.MustParsePrefix("10.15.20.1/24")
	gw6 = netip.MustParsePrefix("fd00:15:20::1/64")
)

// ensure runs Ensure in the sandbox's node and returns the bridge.
func ensure(t testing.TB, sb *testnet.Sandbox, cfg Config) *netlink.Bridge {
	t.Helper()
	var br *netlink.Bridge
	sb.MustDo(t, func() (err error) { br, _, err = Ensure(cfg); return err })
	return br
}

// TestHasOtherPort: a port counts when its alias has the prefix and it is
// not the one excepted; ports of another bridge never count; a missing
// bridge has none. With many ports it stops at the first (see
// BenchmarkHasOtherPort for the cost).
func TestHasOtherPort(t *testing.T) {
	sb := testnet.New(t)
	br := ensure(t, sb, Config{Name: "br-test"})
	other := ensure(t, sb, Config{Name: "br-other"})
	c := sb.Container()
	create := func(name, alias string, on *netlink.Bridge) {
		sb.MustDo(t, func() error {
			_, err := veth.Create(veth.Config{ContainerNetNS: c.Path, IfName: "e" + name, HostName: name, Bridge: on, Alias: alias})
			return err
		})
	}
	has := func(bridge, except string) bool {
		var got bool
		sb.MustDo(t, func() (err error) { got, err = HasOtherPort(bridge, except, "pier:"); return err })
		return got
	}
	create("vfor", "someone else's", br)
	create("vother", "pier:n:c9:eth0", other)
	if has("br-test", "") {
		t.Error("a port without Pier's alias, or on another bridge, counted")
	}
	create("vmine", "pier:n:c1:eth0", br)
	if !has("br-test", "") || has("br-test", "vmine") {
		t.Errorf("one Pier port: counted %v, counted when excepted %v", has("br-test", ""), has("br-test", "vmine"))
	}
	create("vnext", "pier:n:c2:eth0", br)
	if !has("br-test", "vmine") {
		t.Error("a second Pier port not found")
	}
	if has("br-absent", "") {
		t.Error("a missing bridge has a port")
	}
}
