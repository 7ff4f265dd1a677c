// Package portfill puts many ports on a sandbox's bridge, the way Pier
// attaches containers, for benchmarks that show how a cost grows with the
// number of containers on a node. It is a package of its own, apart from
// testnet, because it uses package veth, whose own tests use testnet.
package portfill

import (
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

// Add puts n more ports on br the way Pier does, with their container
// ends up (so the ports forward) in one filler namespace. The filler has
// IPv6 off: real containers each have their own namespace, and a thousand
// IPv6 interfaces in one would make the filler's own route lookups, not the
// node's, the cost being measured.
func Add(tb testing.TB, sb *testnet.Sandbox, br *netlink.Bridge, n int) {
	tb.Helper()
	if n == 0 {
		return
	}
	filler := sb.Container()
	filler.MustRun(tb, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	sb.MustDo(tb, func() error {
		for i := range n {
			_, err := veth.Create(veth.Config{ContainerNetNS: filler.Path, IfName: fmt.Sprintf("e%d", i),
				HostName: fmt.Sprintf("vport%d", i), Bridge: br, Hairpin: true, Group: veth.PortGroup})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err := upAll(filler.Path, n); err != nil {
		tb.Fatal(err)
	}
}

// upAll sets the filler's links e0 … e<n-1> up.
func upAll(path string, n int) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	for i := range n {
		l, err := h.LinkByName(fmt.Sprintf("e%d", i))
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}
