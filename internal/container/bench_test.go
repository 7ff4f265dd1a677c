package container

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/testnet/portfill"
	"github.com/pier-cni/pier/internal/veth"
)

// BenchmarkAttach measures the kernel side of one ADD and its DEL:
// veth.Create + Configure (the classic bridge configuration: one address,
// a default route and a /32 via the gateway) + DeleteLink, in a
// sandbox. ports=N first puts N other containers' veths on the bridge, to
// show how the cost grows with the number of containers on the node.
func BenchmarkAttach(b *testing.B) {
	for _, ports := range []int{0, 200, 1000} {
		b.Run(fmt.Sprintf("ports=%d", ports), func(b *testing.B) {
			sb := testnet.New(b)
			br := newBridge(b, sb)
			c := sb.Container()
			portfill.Add(b, sb, br, ports)
			vc := veth.Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: veth.HostName("bench", "eth0"),
				Bridge: br, Hairpin: true, Alias: "pier:bench:bench:eth0"}
			ipc := IPConfig{
				Addrs: testnet.Prefixes("10.15.20.2/24"),
				Routes: []Route{
					{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw4.Addr()},
					{Dst: netip.MustParsePrefix("1.1.1.1/32"), Gw: gw4.Addr()},
				},
			}
			var add, del time.Duration
			sb.MustDo(b, func() error {
				b.ResetTimer()
				for range b.N {
					t0 := time.Now()
					if _, err := veth.Create(vc); err != nil {
						return err
					}
					if err := Configure(c.Path, "eth0", ipc); err != nil {
						return err
					}
					t1 := time.Now()
					if _, err := DeleteLink(c.Path, "eth0"); err != nil {
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
