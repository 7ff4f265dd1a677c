package bridge

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/testnet"
)

func TestIfbName(t *testing.T) {
	host := HostVethName("0123456789abcdef", "eth0")
	if got := IfbName(host); len(got) != 15 || !strings.HasPrefix(got, "pifb") || got[4:] != host[4:] {
		t.Errorf("IfbName(%s) = %s", host, got)
	}
}

// TestLimits: ApplyLimits installs a tbf on the host veth and, for the
// egress limit, an ifb with IPv6 off, its tbf and the redirect; CheckLimits
// agrees, and names a changed rate; RemoveLimits deletes the ifb, twice;
// an ifb whose veth is gone is an orphan for GC.
func TestLimits(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	var v *Veth
	inNode(t, sb, func() (err error) {
		v, err = CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: HostVethName(c.Name, "eth0"), Bridge: br, Group: PortGroup})
		return err
	})
	host := v.Host.Attrs().Name
	lim := Limits{IngressRate: 10_000_000, IngressBurst: 262144, EgressRate: 20_000_000, EgressBurst: 262144}
	var ifb netlink.Link
	inNode(t, sb, func() (err error) { ifb, err = ApplyLimits(v.Host, lim); return err })
	if ifb == nil || ifb.Attrs().Name != IfbName(host) {
		t.Fatalf("ApplyLimits returned %v, want the ifb %s", ifb, IfbName(host))
	}
	for dev, want := range map[string]string{host: "rate 10Mbit", IfbName(host): "rate 20Mbit"} {
		if q := sb.Node.MustRun(t, "tc", "qdisc", "show", "dev", dev, "root"); !strings.Contains(q, "tbf") || !strings.Contains(q, want) {
			t.Errorf("root qdisc of %s: %s, want tbf %s", dev, q, want)
		}
	}
	if f := sb.Node.MustRun(t, "tc", "filter", "show", "dev", host, "ingress"); !strings.Contains(f, "Egress Redirect to device "+IfbName(host)) {
		t.Errorf("ingress filter of %s:\n%s", host, f)
	}
	if l := link(t, sb.Node, IfbName(host)); !slices.Contains(l.Flags, "UP") || l.MTU != v.Host.Attrs().MTU || len(l.AddrInfo) != 0 {
		t.Errorf("ifb %+v: want up, the veth's MTU, no (IPv6 link-local) address", l)
	}
	inNode(t, sb, func() error {
		if p := CheckLimits(host, lim); len(p) != 0 {
			t.Errorf("CheckLimits on what ApplyLimits made: %v", p)
		}
		changed := lim
		changed.EgressRate = 30_000_000
		if p := CheckLimits(host, changed); len(p) != 1 || !strings.Contains(p[0].Error(), "egress limit") {
			t.Errorf("CheckLimits with another egress rate: %v", p)
		}
		return nil
	})

	// The veth goes (as the container's DEL takes it): the ifb is an orphan.
	inNode(t, sb, func() error { return DeleteHostVeth(host) })
	inNode(t, sb, func() error {
		orphans, err := OrphanIfbs()
		if err == nil && !slices.Equal(orphans, []string{IfbName(host)}) {
			t.Errorf("OrphanIfbs = %v", orphans)
		}
		return err
	})
	inNode(t, sb, func() error { return errors.Join(RemoveLimits(host), RemoveLimits(host)) })
	if _, err := sb.Node.Run("ip", "link", "show", IfbName(host)); err == nil {
		t.Error("ifb left after RemoveLimits")
	}
}

// TestHostVethHardening: the host end is in Pier's device group with
// accept_ra=0 and IPv6 off; DisableRA fixes a bridge someone else made;
// EnableRouteLocalnet sets the bridge's route_localnet.
func TestHostVethHardening(t *testing.T) {
	sb := testnet.New(t)
	br := newBridge(t, sb)
	c := sb.Container()
	host := HostVethName(c.Name, "eth0")
	inNode(t, sb, func() error {
		_, err := CreateVeth(VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: host, Bridge: br, Group: PortGroup})
		return err
	})
	if out := sb.Node.MustRun(t, "ip", "-d", "link", "show", host); !strings.Contains(out, "group 1885955442") {
		t.Errorf("host veth not in Pier's group:\n%s", out)
	}
	sb.Node.MustRun(t, "ip", "link", "add", "foreign0", "type", "bridge")
	inNode(t, sb, func() error { return errors.Join(DisableRA("foreign0"), EnableRouteLocalnet("foreign0")) })
	for key, want := range map[string]string{
		"net.ipv6.conf." + host + ".accept_ra":    "0",
		"net.ipv6.conf." + host + ".disable_ipv6": "1",
		"net.ipv6.conf.foreign0.accept_ra":        "0",
		"net.ipv4.conf.foreign0.route_localnet":   "1",
	} {
		if got := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", key)); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}

func TestEnsureBridgeReport(t *testing.T) {
	sb := testnet.New(t)
	var first, second bool
	inNode(t, sb, func() (err error) {
		if _, first, err = EnsureBridgeReport(BridgeConfig{Name: "br-new"}); err != nil {
			return err
		}
		_, second, err = EnsureBridgeReport(BridgeConfig{Name: "br-new"})
		return err
	})
	if !first || second {
		t.Errorf("created: first call %v, second %v; want true, false", first, second)
	}
}
