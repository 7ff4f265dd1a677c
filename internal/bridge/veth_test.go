package bridge

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/vishvananda/netlink"
)

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	mac, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// gw4 and gw6 are the sandbox network's gateways, as in DESIGN §1.
var (
	gw4 = netip.MustParsePrefix("10.15.20.1/24")
	gw6 = netip.MustParsePrefix("fd00:15:20::1/64")
)

// newBridge makes the sandbox's bridge with both gateways.
func newBridge(t testing.TB, sb *testnet.Sandbox) *netlink.Bridge {
	t.Helper()
	var br *netlink.Bridge
	inNode(t, sb, func() (err error) {
		br, err = EnsureBridge(BridgeConfig{Name: "br-test", Gateways: []netip.Prefix{gw4, gw6}})
		return err
	})
	return br
}

// attach is the ADD sequence of one container: veth, then addresses and
// routes.
func attach(t testing.TB, sb *testnet.Sandbox, br *netlink.Bridge, c *testnet.NS, ipc ContainerIPConfig) *Veth {
	t.Helper()
	var v *Veth
	inNode(t, sb, func() (err error) {
		v, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0",
			HostName: HostVethName(c.Name, "eth0"), Bridge: br, Hairpin: true,
			Alias: "pier:test:" + c.Name + ":eth0"})
		if err != nil {
			return err
		}
		return ConfigureContainer(c.Path, "eth0", ipc)
	})
	return v
}

func TestCreateVethAndConfigure(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	host := HostVethName("1234567890", "eth0")
	mac := mustMAC(t, "02:42:0a:0f:14:02")
	cfg := ContainerIPConfig{
		Addrs: mustPrefixes("10.15.20.2/24"),
		Routes: []Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw4.Addr()},
			{Dst: netip.MustParsePrefix("1.1.1.1/32"), Gw: gw4.Addr()},
			{Dst: netip.MustParsePrefix("192.0.2.0/24")}, // on-link
		},
	}
	var v *Veth
	inNode(t, sb, func() (err error) {
		v, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: host,
			MTU: 1450, MAC: mac, Bridge: br, Hairpin: true, Alias: "pier:mybridge:1234567890:eth0"})
		if err != nil {
			return err
		}
		return ConfigureContainer(c.Path, "eth0", cfg)
	})

	ce := link(t, c, "eth0")
	if ce.Address != mac.String() || ce.MTU != 1450 || !slices.Contains(ce.Flags, "UP") {
		t.Fatalf("container eth0: %+v", ce)
	}
	if got := sortedPrefixes(globalAddrs(t, ce)); !slices.Equal(got, []string{"10.15.20.2/24"}) {
		t.Fatalf("container addresses %v", got)
	}
	wantRoutes := []string{"1.1.1.1 via 10.15.20.1", "192.0.2.0/24", "default via 10.15.20.1"}
	if got := routes(t, c, "-4", "eth0"); !slices.Equal(got, wantRoutes) {
		t.Fatalf("container routes %v, want %v", got, wantRoutes)
	}

	he := link(t, sb.Node, host)
	if he.Master != "br-test" || !he.LinkInfo.SlaveData.Hairpin || he.Alias != "pier:mybridge:1234567890:eth0" || he.MTU != 1450 || !slices.Contains(he.Flags, "UP") {
		t.Fatalf("host end: %+v", he)
	}
	// The host end is a pure bridge port: no IPv6, so no link-local
	// address, route or multicast chatter in the node (see CreateVeth).
	if len(he.AddrInfo) != 0 {
		t.Fatalf("host end has addresses: %+v", he.AddrInfo)
	}
	if v := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", "net.ipv6.conf."+host+".disable_ipv6")); v != "1" {
		t.Fatalf("host end disable_ipv6 = %s, want 1", v)
	}

	// What CreateVeth returned matches the kernel.
	ha, ca := v.Host.Attrs(), v.Container.Attrs()
	if ha.Name != host || ha.Index != he.Index || ha.HardwareAddr.String() != he.Address || ha.MasterIndex != br.Index || ha.Alias != he.Alias {
		t.Fatalf("returned host %+v, kernel %+v", ha, he)
	}
	if ca.Name != "eth0" || ca.Index != ce.Index || ca.HardwareAddr.String() != ce.Address || ca.MTU != ce.MTU {
		t.Fatalf("returned container %+v, kernel %+v", ca, ce)
	}

	checkInspection(t, sb, c, cfg, he)
}

// checkInspection checks that ReadContainer and BridgePorts read back the
// attachment TestCreateVethAndConfigure made.
func checkInspection(t *testing.T, sb *testnet.Sandbox, c *testnet.NS, cfg ContainerIPConfig, he ipLink) {
	t.Helper()
	var st *ContainerState
	var ports []Port
	inNode(t, sb, func() (err error) {
		if st, err = ReadContainer(c.Path, "eth0"); err != nil {
			return err
		}
		ports, err = BridgePorts("br-test")
		return err
	})
	if got := sortedPrefixes(st.Addrs); !slices.Equal(got, []string{"10.15.20.2/24"}) {
		t.Fatalf("ReadContainer addrs %v", got)
	}
	if !sameRoutes(st.Routes, cfg.Routes) {
		t.Fatalf("ReadContainer routes %v, want %v", st.Routes, cfg.Routes)
	}
	if st.Link.Attrs().HardwareAddr.String() != link(t, c, "eth0").Address {
		t.Fatalf("ReadContainer link MAC %s", st.Link.Attrs().HardwareAddr)
	}
	if len(ports) != 1 || ports[0].Name != he.Name || !ports[0].Hairpin || ports[0].Alias != he.Alias || ports[0].Index != he.Index || ports[0].MTU != 1450 || !ports[0].Up {
		t.Fatalf("BridgePorts: %+v", ports)
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

// Hairpin off is the kernel default: no second request, and BridgePorts
// reports it off.
func TestCreateVethNoHairpinNoAlias(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	var ports []Port
	inNode(t, sb, func() (err error) {
		if _, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-plain", Bridge: br}); err != nil {
			return err
		}
		ports, err = BridgePorts("br-test")
		return err
	})
	he := link(t, sb.Node, "veth-plain")
	if he.Master != "br-test" || he.LinkInfo.SlaveData.Hairpin || he.Alias != "" {
		t.Fatalf("host end: %+v", he)
	}
	if len(ports) != 1 || ports[0].Hairpin {
		t.Fatalf("BridgePorts: %+v", ports)
	}
}

func TestCreateVethIfNameExists(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	c.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	var err error
	inNode(t, sb, func() error {
		_, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-x", Bridge: br})
		return nil
	})
	if !errors.Is(err, ErrInterfaceExists) {
		t.Fatalf("%v: want ErrInterfaceExists", err)
	}
	wantErrContains(t, err, "eth0", c.Path)
	if names := linkNames(t, sb.Node); !slices.Equal(names, []string{"br-test", "lo"}) {
		t.Fatalf("node links after failure: %v", names)
	}
}

func TestCreateVethHostNameExists(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	sb.Node.MustRun(t, "ip", "link", "add", "veth-x", "type", "veth", "peer", "name", "veth-xp")
	var err error
	inNode(t, sb, func() error {
		_, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-x", Bridge: br})
		return nil
	})
	if !errors.Is(err, ErrInterfaceExists) {
		t.Fatalf("%v: want ErrInterfaceExists", err)
	}
	wantErrContains(t, err, "veth-x")
	if names := linkNames(t, c); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("container links after failure: %v", names)
	}
}

// A failure after the pair exists (here the kernel rejects an alias longer
// than 255 bytes) leaves nothing behind in either namespace.
func TestCreateVethRollback(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	var err error
	inNode(t, sb, func() error {
		_, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-x", Bridge: br,
			Hairpin: true, Alias: strings.Repeat("a", 300)})
		return nil
	})
	wantErrContains(t, err, "veth-x")
	if names := linkNames(t, sb.Node); !slices.Equal(names, []string{"br-test", "lo"}) {
		t.Fatalf("node links after rollback: %v", names)
	}
	if names := linkNames(t, c); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("container links after rollback: %v", names)
	}
}

func TestCreateVethMissingNetns(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	var err error
	inNode(t, sb, func() error {
		_, err = CreateVeth(VethConfig{ContainerNetNS: "/var/run/netns/pt-absent", IfName: "eth0", HostName: "veth-x", Bridge: br})
		return nil
	})
	wantErrContains(t, err, "veth-x", "/var/run/netns/pt-absent")
}

// Two containers on one bridge reach each other and the gateway, over
// IPv4 and IPv6. Traffic stays inside the sandbox.
func TestTwoContainersPing(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c1, c2 := sb.Container(), sb.Container()
	for i, c := range []*testnet.NS{c1, c2} {
		n := i + 2
		attach(t, sb, br, c, ContainerIPConfig{
			Addrs: mustPrefixes(
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 15, 20, byte(n)}), 24).String(),
				"fd00:15:20::"+string(rune('0'+n))+"/64"),
			Routes: []Route{
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw4.Addr()},
				{Dst: netip.MustParsePrefix("::/0"), Gw: gw6.Addr()},
			},
		})
	}
	if got := routes(t, c1, "-6", "eth0"); !slices.Contains(got, "default via fd00:15:20::1") {
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
// ConfigureContainer returns once it is done.
func TestConfigureContainerEnableDAD(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	start := time.Now()
	attach(t, sb, br, c, ContainerIPConfig{Addrs: mustPrefixes("fd00:15:20::5/64"), EnableDAD: true})
	took := time.Since(start)
	l := link(t, c, "eth0")
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

// A duplicate address fails DAD and ConfigureContainer says so.
func TestConfigureContainerDADFailure(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c1, c2 := sb.Container(), sb.Container()
	attach(t, sb, br, c1, ContainerIPConfig{Addrs: mustPrefixes("fd00:15:20::7/64")})
	var err error
	inNode(t, sb, func() error {
		if _, err := CreateVeth(VethConfig{ContainerNetNS: c2.Path, IfName: "eth0", HostName: "veth-dup", Bridge: br}); err != nil {
			return err
		}
		err = ConfigureContainer(c2.Path, "eth0", ContainerIPConfig{Addrs: mustPrefixes("fd00:15:20::7/64"), EnableDAD: true})
		return nil
	})
	wantErrContains(t, err, "fd00:15:20::7", "duplicate")
}

// A container namespace whose default disables IPv6 still gets its IPv6
// address: the interface's disable_ipv6 is turned off, as the reference does.
func TestConfigureContainerIPv6Disabled(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	c.MustRun(t, "sysctl", "-w", "net.ipv6.conf.default.disable_ipv6=1")
	attach(t, sb, br, c, ContainerIPConfig{Addrs: mustPrefixes("10.15.20.9/24", "fd00:15:20::9/64")})
	got := sortedPrefixes(globalAddrs(t, link(t, c, "eth0")))
	if want := []string{"10.15.20.9/24", "fd00:15:20::9/64"}; !slices.Equal(got, want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
}

func TestConfigureContainerMissingLink(t *testing.T) {
	sb := testnet.New(t)
	c := sb.Container()
	var err error
	inNode(t, sb, func() error {
		err = ConfigureContainer(c.Path, "eth0", ContainerIPConfig{Addrs: mustPrefixes("10.15.20.2/24")})
		return nil
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("%v: want ErrNotFound", err)
	}
	wantErrContains(t, err, "eth0", c.Path)
}

func TestDeleteContainerLink(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	attach(t, sb, br, c, ContainerIPConfig{Addrs: mustPrefixes("10.15.20.2/24", "fd00:15:20::2/64")})
	var got []netip.Prefix
	inNode(t, sb, func() (err error) {
		got, err = DeleteContainerLink(c.Path, "eth0")
		return err
	})
	if s := sortedPrefixes(got); !slices.Equal(s, []string{"10.15.20.2/24", "fd00:15:20::2/64"}) {
		t.Fatalf("returned %v", s)
	}
	if names := linkNames(t, sb.Node); !slices.Equal(names, []string{"br-test", "lo"}) {
		t.Fatalf("node links after DEL: %v (host end should go with the pair)", names)
	}
	// Again: nothing to do.
	inNode(t, sb, func() error {
		got, err := DeleteContainerLink(c.Path, "eth0")
		if got != nil || err != nil {
			t.Errorf("second DEL: %v, %v; want nil, nil", got, err)
		}
		return nil
	})
	// Namespace gone: nothing to do either.
	c.Delete(t)
	inNode(t, sb, func() error {
		got, err := DeleteContainerLink(c.Path, "eth0")
		if got != nil || err != nil {
			t.Errorf("DEL with deleted netns: %v, %v; want nil, nil", got, err)
		}
		var rerr error
		if _, rerr = ReadContainer(c.Path, "eth0"); !errors.Is(rerr, ErrNotFound) {
			t.Errorf("ReadContainer with deleted netns: %v; want ErrNotFound", rerr)
		}
		return nil
	})
}

func TestDeleteHostVeth(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	v := attach(t, sb, br, c, ContainerIPConfig{Addrs: mustPrefixes("10.15.20.2/24")})
	inNode(t, sb, func() error {
		if err := DeleteHostVeth(v.Host.Attrs().Name); err != nil {
			return err
		}
		return DeleteHostVeth(v.Host.Attrs().Name) // missing is fine
	})
	if names := linkNames(t, c); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("container links after host-side delete: %v", names)
	}
	inNode(t, sb, func() error {
		if _, err := ReadContainer(c.Path, "eth0"); !errors.Is(err, ErrNotFound) {
			t.Errorf("ReadContainer: %v; want ErrNotFound", err)
		}
		return nil
	})
}
