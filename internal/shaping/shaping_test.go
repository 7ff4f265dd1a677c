package shaping

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

func TestIfbName(t *testing.T) {
	host := veth.HostName("0123456789abcdef", "eth0")
	if got := IfbName(host); len(got) != 15 || !strings.HasPrefix(got, "pifb") || got[4:] != host[4:] {
		t.Errorf("IfbName(%s) = %s", host, got)
	}
}

// TestLimits: Apply installs a tbf on the host veth and, for the egress
// limit, an ifb with IPv6 off, its tbf and the redirect; Check agrees, and
// names a changed rate; Remove deletes the ifb, twice; an ifb whose veth is
// gone is an orphan for GC.
func TestLimits(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	var v *veth.Pair
	sb.MustDo(t, func() (err error) {
		v, err = veth.Create(veth.Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: veth.HostName(c.Name, "eth0"), Bridge: br, Group: veth.PortGroup})
		return err
	})
	host := v.Host.Attrs().Name
	lim := Limits{IngressRate: 10_000_000, IngressBurst: 262144, EgressRate: 20_000_000, EgressBurst: 262144}
	var ifb netlink.Link
	sb.MustDo(t, func() (err error) { ifb, err = Apply(v.Host, lim); return err })
	if ifb == nil || ifb.Attrs().Name != IfbName(host) {
		t.Fatalf("Apply returned %v, want the ifb %s", ifb, IfbName(host))
	}
	for dev, want := range map[string]string{host: "rate 10Mbit", IfbName(host): "rate 20Mbit"} {
		if q := sb.Node.MustRun(t, "tc", "qdisc", "show", "dev", dev, "root"); !strings.Contains(q, "tbf") || !strings.Contains(q, want) {
			t.Errorf("root qdisc of %s: %s, want tbf %s", dev, q, want)
		}
	}
	if f := sb.Node.MustRun(t, "tc", "filter", "show", "dev", host, "ingress"); !strings.Contains(f, "Egress Redirect to device "+IfbName(host)) {
		t.Errorf("ingress filter of %s:\n%s", host, f)
	}
	if l := sb.Node.Link(t, IfbName(host)); !slices.Contains(l.Flags, "UP") || l.MTU != v.Host.Attrs().MTU || len(l.AddrInfo) != 0 {
		t.Errorf("ifb %+v: want up, the veth's MTU, no (IPv6 link-local) address", l)
	}
	sb.MustDo(t, func() error {
		if p := Check(host, lim); len(p) != 0 {
			t.Errorf("Check on what Apply made: %v", p)
		}
		changed := lim
		changed.EgressRate = 30_000_000
		if p := Check(host, changed); len(p) != 1 || !strings.Contains(p[0].Error(), "egress limit") {
			t.Errorf("Check with another egress rate: %v", p)
		}
		return nil
	})

	// The veth goes (as the container's DEL takes it): the ifb is an orphan.
	sb.MustDo(t, func() error { return veth.DeleteHostEnd(host) })
	sb.MustDo(t, func() error {
		orphans, err := OrphanIfbs()
		if err == nil && !slices.Equal(orphans, []string{IfbName(host)}) {
			t.Errorf("OrphanIfbs = %v", orphans)
		}
		return err
	})
	sb.MustDo(t, func() error { return errors.Join(Remove(host), Remove(host)) })
	if _, err := sb.Node.Run("ip", "link", "show", IfbName(host)); err == nil {
		t.Error("ifb left after Remove")
	}
}

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

// gw4 and gw6 are the sandbox network's gateways.
var (
	gw4 = netip.MustParsePrefix("10.15.20.1/24")
	gw6 = netip.MustParsePrefix("fd00:15:20::1/64")
)
