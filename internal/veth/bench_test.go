package veth_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/testnet/portfill"
	"github.com/pier-cni/pier/internal/veth"
)

// BenchmarkCreate measures Create, with ports=N other ports already on
// the bridge: the kernel's work for a new bridge port grows with the
// bridge's size. The pair is deleted after each creation, outside the
// measurement (deleting a link waits for RCU grace periods, which would
// dwarf the rest). It reports the median (µs/create).
func BenchmarkCreate(b *testing.B) {
	for _, ports := range []int{0, 1000} {
		b.Run(fmt.Sprintf("ports=%d", ports), func(b *testing.B) { benchCreate(b, ports) })
	}
}

func benchCreate(b *testing.B, ports int) {
	sb := testnet.New(b)
	c := sb.Container()
	var br *netlink.Bridge
	sb.MustDo(b, func() (err error) { br, _, err = bridge.Ensure(bridge.Config{Name: "br-bench"}); return err })
	portfill.Add(b, sb, br, ports)
	cfg := veth.Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: veth.HostName("bench", "eth0"),
		Bridge: br, Hairpin: true, Alias: "pier:bench:bench:eth0", Group: veth.PortGroup}
	var took []time.Duration
	sb.MustDo(b, func() error {
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			if _, err := veth.Create(cfg); err != nil {
				return err
			}
			took = append(took, time.Since(t0))
			if err := veth.DeleteHostEnd(cfg.HostName); err != nil {
				return err
			}
		}
		return nil
	})
	b.ReportMetric(medianMicros(took), "µs/create")
}

func medianMicros(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[len(ds)/2].Nanoseconds()) / 1e3
}
