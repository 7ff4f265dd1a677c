package bridge

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/vishvananda/netlink"
)

// BenchmarkAttach measures the kernel side of one ADD and its DEL:
// CreateVeth + ConfigureContainer (the DESIGN §1 configuration: one address,
// a default route and a /32 via the gateway) + DeleteContainerLink, in a
// sandbox. ports=N first puts N other containers' veths on the bridge, to
// show how the cost grows with the number of containers on the node.
func BenchmarkAttach(b *testing.B) {
	for _, ports := range []int{0, 200, 1000} {
		b.Run(fmt.Sprintf("ports=%d", ports), func(b *testing.B) {
			sb := testnet.New(b)
			br := newBridge(b, sb)
			c := sb.Container()
			addPorts(b, sb, br, ports)
			vc := VethConfig{ContainerNetNS: c.Path, IfName: "eth0", HostName: HostVethName("bench", "eth0"),
				Bridge: br, Hairpin: true, Alias: "pier:bench:bench:eth0"}
			ipc := ContainerIPConfig{
				Addrs: mustPrefixes("10.15.20.2/24"),
				Routes: []Route{
					{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw4.Addr()},
					{Dst: netip.MustParsePrefix("1.1.1.1/32"), Gw: gw4.Addr()},
				},
			}
			var add, del time.Duration
			inNode(b, sb, func() error {
				b.ResetTimer()
				for range b.N {
					t0 := time.Now()
					if _, err := CreateVeth(vc); err != nil {
						return err
					}
					if err := ConfigureContainer(c.Path, "eth0", ipc); err != nil {
						return err
					}
					t1 := time.Now()
					if _, err := DeleteContainerLink(c.Path, "eth0"); err != nil {
						return err
					}
					add, del = add+t1.Sub(t0), del+time.Since(t1)
				}
				b.StopTimer()
				return nil
			})
			// The two halves apart: deleting a netdev waits in the kernel
			// for RCU (rcu_barrier in netdev_run_todo), which dwarfs the rest.
			b.ReportMetric(float64(add.Microseconds())/float64(b.N), "add-µs/op")
			b.ReportMetric(float64(del.Microseconds())/float64(b.N), "del-µs/op")
		})
	}
}

// BenchmarkEnsureBridge measures EnsureBridge on an existing, configured
// dual-stack bridge with 200 ports: what every ADD after the first pays.
func BenchmarkEnsureBridge(b *testing.B) {
	sb := testnet.New(b)
	br := newBridge(b, sb)
	cfg := BridgeConfig{Name: br.Name, Gateways: []netip.Prefix{gw4, gw6}}
	addPorts(b, sb, br, 200)
	inNode(b, sb, func() error {
		b.ResetTimer()
		for range b.N {
			if _, err := EnsureBridge(cfg); err != nil {
				return err
			}
		}
		b.StopTimer()
		return nil
	})
}

// addPorts puts n more ports on br the way Pier does, with their container
// ends up (so the ports forward) in one filler namespace. The filler has
// IPv6 off: real containers each have their own namespace, and a thousand
// IPv6 interfaces in one would make the filler's own route lookups, not the
// node's, the cost being measured.
func addPorts(b *testing.B, sb *testnet.Sandbox, br *netlink.Bridge, n int) {
	b.Helper()
	if n == 0 {
		return
	}
	filler := sb.Container()
	filler.MustRun(b, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	inNode(b, sb, func() error {
		for i := range n {
			_, err := CreateVeth(VethConfig{ContainerNetNS: filler.Path, IfName: fmt.Sprintf("e%d", i),
				HostName: fmt.Sprintf("vport%d", i), Bridge: br, Hairpin: true})
			if err != nil {
				return err
			}
		}
		c, err := openContainer(filler.Path)
		if err != nil {
			return err
		}
		defer c.close()
		for i := range n {
			l, err := c.link(fmt.Sprintf("e%d", i))
			if err != nil {
				return err
			}
			if err := c.h.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	})
}
