package plugin

import (
	"fmt"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/veth"
)

// TestCheckNamesWhatIsWrong: CHECK passes on a fresh attachment and, for
// each piece taken away or changed behind the plugin's back, fails with
// code 3 naming it.
func TestCheckNamesWhatIsWrong(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "checknet", bridge: "pt-br4", subnet: "10.35.0.0/24", extra: `"isGateway":true,"ipMasq":true,"hairpinMode":true,`}
	cases := []struct {
		name  string
		spoil func(t *testing.T, a attachment, res *current.Result)
		code  uint
		msg   string
	}{
		{"as built", func(*testing.T, attachment, *current.Result) {}, 0, ""},
		{"container address", func(t *testing.T, a attachment, res *current.Result) {
			a.ns.MustRun(t, "ip", "addr", "flush", "dev", "eth0")
		}, cnierr.UnknownContainer, "eth0 lacks address"},
		{"container route", func(t *testing.T, a attachment, res *current.Result) {
			a.ns.MustRun(t, "ip", "route", "del", "default")
		}, cnierr.UnknownContainer, "lacks route 0.0.0.0/0"},
		{"MAC", func(t *testing.T, a attachment, res *current.Result) {
			res.Interfaces[2].Mac = "02:00:00:00:00:01"
		}, cnierr.UnknownContainer, "prevResult says 02:00:00:00:00:01"},
		{"hairpin", func(t *testing.T, a attachment, res *current.Result) {
			mustRun(t, "ip", "link", "set", "dev", veth.HostName(a.id, a.ifName), "type", "bridge_slave", "hairpin", "off")
		}, cnierr.UnknownContainer, "hairpin false"},
		{"host veth", func(t *testing.T, a attachment, res *current.Result) {
			mustRun(t, "ip", "link", "set", "dev", veth.HostName(a.id, a.ifName), "nomaster")
		}, cnierr.UnknownContainer, "is not a port of bridge pt-br4"},
		{"masquerade element", func(t *testing.T, a attachment, res *current.Result) {
			if err := nat.DelMasq(nat.Network{Name: c.name}, addrsOf(res)); err != nil {
				t.Fatal(err)
			}
		}, cnierr.UnknownContainer, "masquerade set of network checknet lacks"},
		{"gateway on the bridge", func(t *testing.T, a attachment, res *current.Result) {
			mustRun(t, "ip", "addr", "del", "10.35.0.1/24", "dev", "pt-br4")
		}, cnierr.UnknownContainer, "bridge pt-br4 lacks gateway address 10.35.0.1/24"},
		{"IPAM reservation", func(t *testing.T, a attachment, res *current.Result) {
			conf, err := config.LoadIPAM(c.json(n.dataDir), "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := n.alloc.Release(t.Context(), conf, ipam.Owner{ContainerID: a.id, IfName: a.ifName}); err != nil {
				t.Fatal(err)
			}
		}, cnierr.UnknownContainer, "holds no address in network"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n.t = t
			a := n.container(fmt.Sprint("check", i))
			res := n.add(a, c)
			tc.spoil(t, a, res)
			_, err := n.do("CHECK", a, withPrev(t, c, res))
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("CHECK of an attachment as built: %v", err)
				}
				return
			}
			wantCode(t, err, tc.code, tc.msg)
		})
	}
	t.Run("no prevResult", func(t *testing.T) {
		_, err := n.do("CHECK", n.container("check-noprev"), c)
		wantCode(t, err, cnierr.InvalidConfig, "prevResult")
	})
}

// TestGCKeepsOnlyValidAttachments: GC removes every piece of the
// network's attachments that are not valid — veth, address, masquerade
// element — and leaves the valid ones and other networks alone.
func TestGCKeepsOnlyValidAttachments(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "gcnet", bridge: "pt-br5", subnet: "10.36.0.0/24", extra: `"ipMasq":true,`}
	other := netConf{name: "gcother", bridge: "pt-br6", subnet: "10.37.0.0/24", extra: `"ipMasq":true,`}
	keep, drop, elsewhere := n.container("gc-keep"), n.container("gc-drop"), n.container("gc-elsewhere")
	n.add(keep, c)
	n.add(drop, c)
	n.add(elsewhere, other)
	gc := c
	gc.extra += `"cni.dev/valid-attachments":[{"containerID":"gc-keep","ifname":"eth0"}],`
	if _, err := n.do("GC", attachment{}, gc); err != nil {
		t.Fatal(err)
	}
	if s := n.state(keep, c); !s.hostVeth || len(s.reserved) != 1 || len(s.masq) != 1 {
		t.Errorf("GC touched a valid attachment: %+v", s)
	}
	if s := n.state(drop, c); s.hostVeth || len(s.reserved) != 0 || len(s.masq) != 0 {
		t.Errorf("GC left an attachment that is not valid: %+v", s)
	}
	if s := n.state(elsewhere, other); !s.hostVeth || len(s.reserved) != 1 || len(s.masq) != 1 {
		t.Errorf("GC of %s touched network %s: %+v", c.name, other.name, s)
	}
}

// TestStatus: STATUS is 0 while an ADD can be served, else code 50 with
// the reason (a full pool, IPAM that cannot answer).
func TestStatus(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "statusnet", bridge: "pt-br7", subnet: "10.38.0.0/30"} // one address: .2
	if _, err := n.do("STATUS", attachment{}, c); err != nil {
		t.Fatalf("STATUS of an empty network: %v", err)
	}
	n.add(n.container("status-only"), c)
	_, err := n.do("STATUS", attachment{}, c)
	wantCode(t, err, cnierr.PluginNotAvailable, "no free address")
	_, _, err = n.plugin.run("STATUS", attachment{}.args([]byte(`{"cniVersion":"1.1.0","name":"statusnet","type":"pier","ipam":{"type":"host-local-missing"}}`), ""), verbs["STATUS"])
	if code := cnierr.CodeOf(err); code != cnierr.PluginNotAvailable {
		t.Fatalf("STATUS with a delegated IPAM plugin that cannot run: %v (code %d), want 50", err, code)
	}
}

// TestCheckFeatures: CHECK verifies host ports (and their hairpin
// masquerade), the MAC spoof check and bandwidth limits too, naming the
// one that went missing.
func TestCheckFeatures(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "featnet", bridge: "pt-br10", subnet: "10.41.0.0/24", extra: `"isGateway":true,"macspoofchk":true,
		"ingressRate":1000000,"ingressBurst":100000,
		"runtimeConfig":{"portMappings":[{"hostPort":8090,"containerPort":80,"protocol":"udp"}]},`}
	owned := func(a attachment) nat.NodeElements {
		all, err := nat.ListNodeElements()
		if err != nil {
			t.Fatal(err)
		}
		return all.Owned(nat.NodeOwner(c.name, a.id+"/"+a.ifName))
	}
	cases := []struct {
		name  string
		spoil func(t *testing.T, a attachment)
		msg   string
	}{
		{"as built", func(*testing.T, attachment) {}, ""},
		{"host port", func(t *testing.T, a attachment) {
			if err := nat.RemoveNodeElements(nat.NodeElements{Ports: owned(a).Ports}); err != nil {
				t.Fatal(err)
			}
		}, "host port mapping"},
		{"MAC check", func(t *testing.T, a attachment) {
			if err := nat.RemoveNodeElements(nat.NodeElements{Spoof: owned(a).Spoof}); err != nil {
				t.Fatal(err)
			}
		}, "MAC check: port"},
		{"bandwidth", func(t *testing.T, a attachment) {
			mustRun(t, "tc", "qdisc", "del", "dev", veth.HostName(a.id, a.ifName), "root")
		}, "tbf"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n.t = t
			a := n.container(fmt.Sprint("feat", i))
			res := n.add(a, c)
			tc.spoil(t, a)
			_, err := n.do("CHECK", a, withPrev(t, c, res))
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("CHECK as built: %v", err)
				}
			} else {
				wantCode(t, err, cnierr.UnknownContainer, tc.msg)
			}
			if _, err := n.do("DEL", a, withPrev(t, c, res)); err != nil {
				t.Fatal(err)
			}
			n.wantNothing(a, c)
		})
	}
}
