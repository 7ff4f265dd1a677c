package veth

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/container"
	"github.com/pier-cni/pier/internal/testnet"
)

func TestHostName(t *testing.T) {
	a := HostName("1234567890", "eth0")
	if a != HostName("1234567890", "eth0") {
		t.Fatal("not deterministic")
	}
	if len(a) > 15 || !strings.HasPrefix(a, "veth") {
		t.Fatalf("%q: want veth prefix and at most 15 bytes", a)
	}
	for _, other := range []string{HostName("1234567890", "eth1"), HostName("1234567891", "eth0"), HostName("1234567890e", "th0")} {
		if other == a {
			t.Fatalf("%q collides", a)
		}
	}
}

// TestCreate: the pair as asked for — the container end in its namespace
// with the MAC and MTU, the host end enslaved, up, with hairpin, alias and
// the MTU, and no IPv6 — and what Create returns matches the kernel.
func TestCreate(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	host := HostName("1234567890", "eth0")
	mac := mustMAC(t, "02:42:0a:0f:14:02")
	var v *Pair
	sb.MustDo(t, func() (err error) {
		v, err = Create(Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: host,
			MTU: 1450, MAC: mac, Bridge: br, Hairpin: true, Alias: "pier:mybridge:1234567890:eth0"})
		return err
	})
	ce := c.Link(t, "eth0")
	if ce.Address != mac.String() || ce.MTU != 1450 {
		t.Fatalf("container eth0: %+v", ce)
	}
	he := sb.Node.Link(t, host)
	if he.Master != "br-test" || !he.LinkInfo.SlaveData.Hairpin || he.Alias != "pier:mybridge:1234567890:eth0" || he.MTU != 1450 || !slices.Contains(he.Flags, "UP") {
		t.Fatalf("host end: %+v", he)
	}
	// The host end is a pure bridge port: no IPv6, so no link-local
	// address, route or multicast chatter in the node (see Create).
	if len(he.AddrInfo) != 0 {
		t.Fatalf("host end has addresses: %+v", he.AddrInfo)
	}
	if v := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", "net.ipv6.conf."+host+".disable_ipv6")); v != "1" {
		t.Fatalf("host end disable_ipv6 = %s, want 1", v)
	}

	// What Create returned matches the kernel.
	ha, ca := v.Host.Attrs(), v.Container.Attrs()
	if ha.Name != host || ha.Index != he.Index || ha.HardwareAddr.String() != he.Address || ha.MasterIndex != br.Index || ha.Alias != he.Alias {
		t.Fatalf("returned host %+v, kernel %+v", ha, he)
	}
	if ca.Name != "eth0" || ca.Index != ce.Index || ca.HardwareAddr.String() != ce.Address || ca.MTU != ce.MTU {
		t.Fatalf("returned container %+v, kernel %+v", ca, ce)
	}

}

// Hairpin off is the kernel default: no second request, and bridge.Ports
// reports it off.
func TestCreateNoHairpinNoAlias(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	var ports []bridge.Port
	sb.MustDo(t, func() (err error) {
		if _, err = Create(Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-plain", Bridge: br}); err != nil {
			return err
		}
		ports, err = bridge.Ports("br-test")
		return err
	})
	he := sb.Node.Link(t, "veth-plain")
	if he.Master != "br-test" || he.LinkInfo.SlaveData.Hairpin || he.Alias != "" {
		t.Fatalf("host end: %+v", he)
	}
	if len(ports) != 1 || ports[0].Hairpin {
		t.Fatalf("bridge.Ports: %+v", ports)
	}
}

func TestCreateIfNameExists(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	c.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	var err error
	sb.MustDo(t, func() error {
		_, err = Create(Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-x", Bridge: br})
		return nil
	})
	if !errors.Is(err, ErrInterfaceExists) {
		t.Fatalf("%v: want ErrInterfaceExists", err)
	}
	testnet.WantErrContains(t, err, "eth0", c.Path)
	if names := sb.Node.LinkNames(t); !slices.Equal(names, []string{"br-test", "lo"}) {
		t.Fatalf("node links after failure: %v", names)
	}
}

func TestCreateHostNameExists(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	sb.Node.MustRun(t, "ip", "link", "add", "veth-x", "type", "veth", "peer", "name", "veth-xp")
	var err error
	sb.MustDo(t, func() error {
		_, err = Create(Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-x", Bridge: br})
		return nil
	})
	if !errors.Is(err, ErrInterfaceExists) {
		t.Fatalf("%v: want ErrInterfaceExists", err)
	}
	testnet.WantErrContains(t, err, "veth-x")
	if names := c.LinkNames(t); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("container links after failure: %v", names)
	}
}

// A failure after the pair exists (here the kernel rejects an alias longer
// than 255 bytes) leaves nothing behind in either namespace.
func TestCreateRollback(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	var err error
	sb.MustDo(t, func() error {
		_, err = Create(Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: "veth-x", Bridge: br,
			Hairpin: true, Alias: strings.Repeat("a", 300)})
		return nil
	})
	testnet.WantErrContains(t, err, "veth-x")
	if names := sb.Node.LinkNames(t); !slices.Equal(names, []string{"br-test", "lo"}) {
		t.Fatalf("node links after rollback: %v", names)
	}
	if names := c.LinkNames(t); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("container links after rollback: %v", names)
	}
}

func TestCreateMissingNetns(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	var err error
	sb.MustDo(t, func() error {
		_, err = Create(Config{ContainerNetNS: "/var/run/netns/pt-absent", IfName: "eth0", HostName: "veth-x", Bridge: br})
		return nil
	})
	testnet.WantErrContains(t, err, "veth-x", "/var/run/netns/pt-absent")
}

func TestDeleteHostEnd(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	host := HostName(c.Name, "eth0")
	sb.MustDo(t, func() error {
		if _, err := Create(Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: host, Bridge: br}); err != nil {
			return err
		}
		if err := DeleteHostEnd(host); err != nil {
			return err
		}
		return DeleteHostEnd(host) // missing is fine
	})
	if names := c.LinkNames(t); !slices.Equal(names, []string{"lo"}) {
		t.Fatalf("container links after host-side delete: %v", names)
	}
	sb.MustDo(t, func() error {
		if _, err := container.Read(c.Path, "eth0"); !errors.Is(err, container.ErrNotFound) {
			t.Errorf("container.Read: %v; want ErrNotFound", err)
		}
		return nil
	})
}

// TestHostEndHardening: the host end is in Pier's device group with
// accept_ra=0 and IPv6 off.
func TestHostEndHardening(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	host := HostName(c.Name, "eth0")
	sb.MustDo(t, func() error {
		_, err := Create(Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: host, Bridge: br, Group: PortGroup})
		return err
	})
	if out := sb.Node.MustRun(t, "ip", "-d", "link", "show", host); !strings.Contains(out, "group 1885955442") {
		t.Errorf("host veth not in Pier's group:\n%s", out)
	}
	for key, want := range map[string]string{
		"net.ipv6.conf." + host + ".accept_ra":    "0",
		"net.ipv6.conf." + host + ".disable_ipv6": "1",
	} {
		if got := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", key)); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}

func ExampleHostName() {
	fmt.Println(len(HostName("1234567890", "eth0")))
	// Output: 15
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

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	mac, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}
