package plugin

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/shaping"
	"github.com/pier-cni/pier/internal/veth"
)

// TestAddBuildsTheAttachment: an ADD with masquerade, a host port and a
// bandwidth limit builds every piece and reports it; a repeated ADD of a
// live attachment fails without touching it; DEL removes everything.
func TestAddBuildsTheAttachment(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "addnet", bridge: "pt-br0", subnet: "10.31.0.0/24",
		extra: `"isGateway":true,"ipMasq":true,"hairpinMode":true,"egressRate":1000000,"egressBurst":100000,
		"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},`}
	a := n.container("c1")
	res := n.add(a, c)
	if got := addrsOf(res); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.31.0.2")}) {
		t.Fatalf("addresses %v, want 10.31.0.2", got)
	}
	names := []string{}
	for _, i := range res.Interfaces {
		names = append(names, i.Name)
	}
	host := veth.HostName(a.id, a.ifName)
	if want := []string{"pt-br0", host, "eth0", shaping.IfbName(host)}; !slices.Equal(names, want) {
		t.Errorf("result interfaces %v, want %v", names, want)
	}
	s := n.state(a, c)
	if !s.hostVeth || !s.ifb || !s.containerLink || len(s.reserved) != 1 || len(s.masq) != 1 || s.nodeElements == 0 {
		t.Fatalf("after ADD: %+v", s)
	}
	if out := a.ns.MustRun(t, "ip", "route", "show", "default"); !strings.Contains(out, "via 10.31.0.1") {
		t.Errorf("container default route: %q", out)
	}
	br, err := netlink.LinkByName("pt-br0")
	if err != nil {
		t.Fatal(err)
	}
	gw, _ := netlink.AddrList(br, netlink.FAMILY_V4)
	if len(gw) != 1 || gw[0].IPNet.String() != "10.31.0.1/24" {
		t.Errorf("bridge addresses %v, want the gateway 10.31.0.1/24", gw)
	}

	_, err = n.do("ADD", a, c)
	wantCode(t, err, cnierr.InterfaceExists)
	if again := n.state(a, c); again.hostVeth != s.hostVeth || !slices.Equal(again.reserved, s.reserved) || !slices.Equal(again.masq, s.masq) {
		t.Errorf("a refused repeated ADD changed the attachment: %+v, was %+v", again, s)
	}
	if _, err := n.do("DEL", a, withPrev(t, c, res)); err != nil {
		t.Fatal(err)
	}
	n.wantNothing(a, c)
}

// TestAddUndoesEachStep makes an ADD fail at each of its steps after the
// veth exists and wants nothing of it left: the undo stack runs every
// completed step's undo. Each case names the step that fails.
func TestAddUndoesEachStep(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	base := netConf{name: "undonet", bridge: "pt-br1", subnet: "10.32.0.0/24",
		extra: `"isGateway":true,"ipMasq":true,"egressRate":1000000,"egressBurst":100000,`}
	cases := []struct {
		step  string
		setup func(t *testing.T) // makes the step fail
		conf  func(netConf) netConf
		code  uint
		msg   string
	}{
		{step: "allocate addresses", code: cnierr.PoolExhausted, msg: "no free address",
			setup: func(*testing.T) {
				n.alloc.set(func(f *faultyAllocator) { f.failAllocate = cnierr.New(cnierr.PoolExhausted, "no free address") })
			}},
		{step: "check the allocator's answer", code: cnierr.IOFailure, msg: "outside range set 0",
			setup: func(*testing.T) {
				n.alloc.set(func(f *faultyAllocator) {
					f.rewrite = func(a []ipam.Address) []ipam.Address {
						a[0].Prefix = netip.MustParsePrefix("192.0.2.9/24")
						return a
					}
				})
			}},
		{step: "put the gateway on the bridge", code: cnierr.IOFailure, msg: "10.32.0.77",
			setup: func(t *testing.T) {
				// Another address of the subnet on the bridge, without forceAddress.
				n.ensureBridge(t, "pt-br1")
				mustRun(t, "ip", "addr", "add", "10.32.0.77/24", "dev", "pt-br1")
			}},
		{step: "configure the container", code: cnierr.IOFailure, msg: "198.51.100.1",
			conf: func(c netConf) netConf {
				c.routes = `[{"dst":"203.0.113.0/24","gw":"198.51.100.1"}]` // an unreachable gateway
				return c
			}},
		{step: "map the host ports", code: cnierr.PortConflict, msg: "8081",
			setup: func(t *testing.T) {
				holder := n.container("holder")
				n.add(holder, netConf{name: "undonet-holder", bridge: "pt-br9", subnet: "10.39.0.0/24",
					extra: `"runtimeConfig":{"portMappings":[{"hostPort":8081,"containerPort":80}]},`})
			},
			conf: func(c netConf) netConf {
				c.extra += `"runtimeConfig":{"portMappings":[{"hostPort":8081,"containerPort":80}]},`
				return c
			}},
	}
	for i, tc := range cases {
		t.Run(tc.step, func(t *testing.T) {
			n.t = t
			t.Cleanup(n.alloc.reset)
			c := base
			if tc.conf != nil {
				c = tc.conf(c)
			}
			if tc.setup != nil {
				tc.setup(t)
			}
			a := n.container(fmt.Sprint("fails-at-step-", i))
			_, err := n.do("ADD", a, c)
			wantCode(t, err, tc.code, tc.msg)
			n.wantNothing(a, c)
			// The runtime's DEL after a failed ADD succeeds.
			if _, err := n.do("DEL", a, c); err != nil {
				t.Errorf("DEL after the failed ADD: %v", err)
			}
			mustRun(t, "ip", "link", "del", "pt-br1") // the next case starts afresh
		})
	}
}

// TestAddRollbackStopsAtAFailedUndo: when an undo fails, the older steps
// stay (an address must stay reserved while the veth that used it exists),
// the ADD's error says so, and the runtime's DEL removes the rest.
func TestAddRollbackStopsAtAFailedUndo(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "rbnet", bridge: "pt-br2", subnet: "10.33.0.0/24", extra: `"isGateway":true,`,
		routes: `[{"dst":"203.0.113.0/24","gw":"198.51.100.1"}]`}
	n.alloc.set(func(f *faultyAllocator) { f.failRelease = cnierr.New(cnierr.TryAgainLater, "store busy") })
	a := n.container("rb")
	_, err := n.do("ADD", a, c)
	wantCode(t, err, cnierr.IOFailure, "rollback failed", "release addresses", "store busy")
	if s := n.state(a, c); !s.hostVeth || len(s.reserved) != 1 {
		t.Fatalf("after a failed release undo: %+v, want the veth and its address kept", s)
	}
	n.alloc.set(func(f *faultyAllocator) { f.failRelease = nil })
	if _, err := n.do("DEL", a, c); err != nil {
		t.Fatal(err)
	}
	n.wantNothing(a, c)
}

func (n *node) ensureBridge(t *testing.T, name string) {
	t.Helper()
	if _, _, err := bridge.Ensure(bridge.Config{Name: name}); err != nil {
		t.Fatal(err)
	}
}
