package container

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

func TestConfigure(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	host := veth.HostName("1234567890", "eth0")
	mac := mustMAC(t, "02:42:0a:0f:14:02")
	cfg := IPConfig{
		Addrs: testnet.Prefixes("10.15.20.2/24"),
		Routes: []Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw4.Addr()},
			{Dst: netip.MustParsePrefix("1.1.1.1/32"), Gw: gw4.Addr()},
			{Dst: netip.MustParsePrefix("192.0.2.0/24")}, // on-link
		},
	}
	sb.MustDo(t, func() error {
		_, err := veth.Create(veth.Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: host,
			MTU: 1450, MAC: mac, Bridge: br, Hairpin: true, Alias: "pier:mybridge:1234567890:eth0"})
		if err != nil {
			return err
		}
		return Configure(c.Path, "eth0", cfg)
	})

	ce := c.Link(t, "eth0")
	if ce.Address != mac.String() || ce.MTU != 1450 || !slices.Contains(ce.Flags, "UP") {
		t.Fatalf("container eth0: %+v", ce)
	}
	if got := testnet.SortedStrings(ce.GlobalAddrs()); !slices.Equal(got, []string{"10.15.20.2/24"}) {
		t.Fatalf("container addresses %v", got)
	}
	wantRoutes := []string{"1.1.1.1 via 10.15.20.1", "192.0.2.0/24", "default via 10.15.20.1"}
	if got := c.Routes(t, "-4", "eth0"); !slices.Equal(got, wantRoutes) {
		t.Fatalf("container routes %v, want %v", got, wantRoutes)
	}

	checkInspection(t, sb, c, cfg, sb.Node.Link(t, host))
}

// checkInspection checks that Read and bridge.Ports read back the
// attachment TestConfigure made.
func checkInspection(t *testing.T, sb *testnet.Sandbox, c *testnet.NS, cfg IPConfig, he testnet.IPLink) {
	t.Helper()
	var st *State
	var ports []bridge.Port
	sb.MustDo(t, func() (err error) {
		if st, err = Read(c.Path, "eth0"); err != nil {
			return err
		}
		ports, err = bridge.Ports("br-test")
		return err
	})
	if got := testnet.SortedStrings(st.Addrs); !slices.Equal(got, []string{"10.15.20.2/24"}) {
		t.Fatalf("Read addrs %v", got)
	}
	if !sameRoutes(st.Routes, cfg.Routes) {
		t.Fatalf("Read routes %v, want %v", st.Routes, cfg.Routes)
	}
	if st.Link.Attrs().HardwareAddr.String() != c.Link(t, "eth0").Address {
		t.Fatalf("Read link MAC %s", st.Link.Attrs().HardwareAddr)
	}
	if len(ports) != 1 || ports[0].Name != he.Name || !ports[0].Hairpin || ports[0].Alias != he.Alias || ports[0].Index != he.Index || ports[0].MTU != 1450 || !ports[0].Up {
		t.Fatalf("bridge.Ports: %+v", ports)
	}
}

func sameRoutes(a, b []Route) bool {
	key := func(rs []Route) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.String())
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

// Two containers on one bridge reach each other and the gateway, over
// IPv4 and IPv6. Traffic stays inside the sandbox.
func TestTwoContainersPing(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c1, c2 := sb.Container(), sb.Container()
	for i, c := range []*testnet.NS{c1, c2} {
		n := i + 2
		attach(t, sb, br, c, IPConfig{
			Addrs: testnet.Prefixes(
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 15, 20, byte(n)}), 24).String(),
				"fd00:15:20::"+string(rune('0'+n))+"/64"),
			Routes: []Route{
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw4.Addr()},
				{Dst: netip.MustParsePrefix("::/0"), Gw: gw6.Addr()},
			},
		})
	}
	if got := c1.Routes(t, "-6", "eth0"); !slices.Contains(got, "default via fd00:15:20::1") {
		t.Fatalf("c1 v6 routes %v", got)
	}
	for _, p := range []struct {
		from *testnet.NS
		args []string
	}{
		{c1, []string{"ping", "-c1", "-W1", "10.15.20.3"}},
		{c2, []string{"ping", "-c1", "-W1", "10.15.20.2"}},
		{c1, []string{"ping", "-c1", "-W1", "10.15.20.1"}},
		{c1, []string{"ping", "-6", "-c1", "-W1", "fd00:15:20::3"}},
		{c2, []string{"ping", "-6", "-c1", "-W1", "fd00:15:20::2"}},
		{c2, []string{"ping", "-6", "-c1", "-W1", "fd00:15:20::1"}},
	} {
		if out, err := p.from.Run(p.args...); err != nil {
			t.Errorf("in %s: %s: %v\n%s", p.from.Name, strings.Join(p.args, " "), err, out)
		}
	}
}

// With EnableDAD the kernel runs duplicate address detection and
// Configure returns once it is done.
func TestConfigureEnableDAD(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	start := time.Now()
	attach(t, sb, br, c, IPConfig{Addrs: testnet.Prefixes("fd00:15:20::5/64"), EnableDAD: true})
	took := time.Since(start)
	l := c.Link(t, "eth0")
	for _, a := range l.AddrInfo {
		if a.Local == "fd00:15:20::5" && a.Tentative {
			t.Fatalf("returned after %s with fd00:15:20::5 still tentative", took)
		}
	}
	if v := strings.TrimSpace(c.MustRun(t, "sysctl", "-n", "net.ipv6.conf.eth0.accept_dad")); v == "0" {
		t.Fatal("accept_dad = 0 with EnableDAD")
	}
	// DAD takes at least one retransmission interval (1 s by default);
	// returning sooner would mean it did not run.
	if took < 500*time.Millisecond {
		t.Fatalf("returned after %s: DAD did not run", took)
	}
	t.Logf("DAD wait: %s", took)
}

// A duplicate address fails DAD and Configure says so.
func TestConfigureDADFailure(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c1, c2 := sb.Container(), sb.Container()
	attach(t, sb, br, c1, IPConfig{Addrs: testnet.Prefixes("fd00:15:20::7/64")})
	var err error
	sb.MustDo(t, func() error {
		if _, err := veth.Create(veth.Config{ContainerNetNS: c2.Path, IfName: "eth0", HostName: "veth-dup", Bridge: br}); err != nil {
			return err
		}
		err = Configure(c2.Path, "eth0", IPConfig{Addrs: testnet.Prefixes("fd00:15:20::7/64"), EnableDAD: true})
		return nil
	})
	testnet.WantErrContains(t, err, "fd00:15:20::7", "duplicate")
}

// A container namespace whose default disables IPv6 still gets its IPv6
// address: the interface's disable_ipv6 is turned off, as the reference does.
func TestConfigureIPv6Disabled(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	c.MustRun(t, "sysctl", "-w", "net.ipv6.conf.default.disable_ipv6=1")
	attach(t, sb, br, c, IPConfig{Addrs: testnet.Prefixes("10.15.20.9/24", "fd00:15:20::9/64")})
	got := testnet.SortedStrings(c.Link(t, "eth0").GlobalAddrs())
	if want := []string{"10.15.20.9/24", "fd00:15:20::9/64"}; !slices.Equal(got, want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
}

func TestConfigureMissingLink(t *testing.T) {
	sb := testnet.New(t)
	c := sb.Container()
	var err error
	sb.MustDo(t, func() error {
		err = Configure(c.Path, "eth0", IPConfig{Addrs: testnet.Prefixes("10.15.20.2/24")})
		return nil
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("%v: want ErrNotFound", err)
	}
	testnet.WantErrContains(t, err, "eth0", c.Path)
}

func TestDeleteLink(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	attach(t, sb, br, c, IPConfig{Addrs: testnet.Prefixes("10.15.20.2/24", "fd00:15:20::2/64")})
	var got []netip.Prefix
	sb.MustDo(t, func() (err error) {
		got, err = DeleteLink(c.Path, "eth0")
		return err
	})
	if s := testnet.SortedStrings(got); !slices.Equal(s, []string{"10.15.20.2/24", "fd00:15:20::2/64"}) {
		t.Fatalf("returned %v", s)
	}
	if names := sb.Node.LinkNames(t); !slices.Equal(names, []string{"br-test", "lo"}) {
		t.Fatalf("node links after DEL: %v (host end should go with the pair)", names)
	}
	// Again: nothing to do.
	sb.MustDo(t, func() error {
		got, err := DeleteLink(c.Path, "eth0")
		if got != nil || err != nil {
			t.Errorf("second DEL: %v, %v; want nil, nil", got, err)
		}
		return nil
	})
	// Namespace gone: nothing to do either.
	c.Delete(t)
	sb.MustDo(t, func() error {
		got, err := DeleteLink(c.Path, "eth0")
		if got != nil || err != nil {
			t.Errorf("DEL with deleted netns: %v, %v; want nil, nil", got, err)
		}
		var rerr error
		if _, rerr = Read(c.Path, "eth0"); !errors.Is(rerr, ErrNotFound) {
			t.Errorf("Read with deleted netns: %v; want ErrNotFound", rerr)
		}
		return nil
	})
}

// gw4 and gw6 are the sandbox network's gateways.
var (
	gw4 = netip.MustParsePrefix("10.15.20.1/24")
	gw6 = netip.MustParsePrefix("fd00:15:20::1/64")
)

// newBridge makes the sandbox's bridge with both gateways.
func newBridge(t testing.TB, sb *testnet.Sandbox) *netlink.Bridge {
	t.Helper()
	var br *netlink.Bridge
	sb.MustDo(t, func() (err error) {
		br, _, err = bridge.Ensure(bridge.Config{Name: "br-test", Gateways: []netip.Prefix{gw4, gw6}})
		return err
	})
	return br
}

// attach is the ADD sequence of one container: veth, then addresses and
// routes.
func attach(t testing.TB, sb *testnet.Sandbox, br *netlink.Bridge, c *testnet.NS, ipc IPConfig) *veth.Pair {
	t.Helper()
	var v *veth.Pair
	sb.MustDo(t, func() (err error) {
		v, err = veth.Create(veth.Config{ContainerNetNS: c.Path, IfName: "eth0",
			HostName: veth.HostName(c.Name, "eth0"), Bridge: br, Hairpin: true,
			Alias: "pier:test:" + c.Name + ":eth0"})
		if err != nil {
			return err
		}
		return Configure(c.Path, "eth0", ipc)
	})
	return v
}

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	mac, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}
