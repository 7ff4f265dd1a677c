package bridge

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/testnet/portfill"
	"github.com/vishvananda/netlink"
)

// BenchmarkEnsure measures Ensure on an existing, configured dual-stack
// bridge with 200 ports: what every ADD after the first pays.
func BenchmarkEnsure(b *testing.B) {
	sb := testnet.New(b)
	cfg := Config{Name: "br-test", Gateways: []netip.Prefix{gw4, gw6}}
	br := ensure(b, sb, cfg)
	portfill.Add(b, sb, br, 200)
	sb.MustDo(b, func() error {
		b.ResetTimer()
		for range b.N {
			if _, _, err := Ensure(cfg); err != nil {
				return err
			}
		}
		b.StopTimer()
		return nil
	})
}

// BenchmarkAddrs is why the bridge's addresses are read with a dump built
// by hand (rtnl.go) rather than with vishvananda/netlink's AddrList: the
// hand-built dump carries the bridge's index, which the kernel filters on
// (strict checking), where AddrList dumps every address of the node and
// filters here. ports=N puts N other ports (with IPv6 off, as Pier's) on
// the bridge. Both run alternately in one loop; medians are reported.
func BenchmarkAddrs(b *testing.B) {
	for _, ports := range []int{0, 1000} {
		b.Run(fmt.Sprintf("ports=%d", ports), func(b *testing.B) {
			sb := testnet.New(b)
			br := ensure(b, sb, Config{Name: "br-test", Gateways: []netip.Prefix{gw4, gw6}})
			portfill.Add(b, sb, br, ports)
			alternate(b, sb, map[string]func() error{
				"pier": func() error { _, err := Addrs(br.Name); return err },
				"library": func() error {
					l, err := netlink.LinkByName(br.Name)
					if err == nil {
						_, err = netlink.AddrList(l, netlink.FAMILY_ALL)
					}
					return err
				},
			})
		})
	}
}

// BenchmarkPorts is why Ports reads the bridge's ports with a dump built
// by hand (rtnl.go): the kernel filters it to the bridge's ports
// (IFLA_MASTER), and each answer carries the port's hairpin mode. The
// library offers LinkList (every link of the node) and, for the hairpin
// mode, LinkGetProtinfo, which dumps every bridge port of the node to
// answer for one: "library" is those two for the same answer. ports=N
// puts N ports on the bridge.
func BenchmarkPorts(b *testing.B) {
	for _, ports := range []int{1, 200} {
		b.Run(fmt.Sprintf("ports=%d", ports), func(b *testing.B) {
			sb := testnet.New(b)
			br := ensure(b, sb, Config{Name: "br-test"})
			portfill.Add(b, sb, br, ports)
			alternate(b, sb, map[string]func() error{
				"pier": func() error { _, err := Ports(br.Name); return err },
				"library": func() error {
					all, err := netlink.LinkList()
					for _, l := range all {
						if err == nil && l.Attrs().MasterIndex == br.Index {
							_, err = netlink.LinkGetProtinfo(l)
						}
					}
					return err
				},
			})
		})
	}
}

// alternate runs the named functions in turn b.N times in all, inside the
// sandbox's node, and reports the median time of each as "<name>-µs".
func alternate(b *testing.B, sb *testnet.Sandbox, fns map[string]func() error) {
	names := slices.Sorted(maps.Keys(fns))
	took := map[string][]time.Duration{}
	sb.MustDo(b, func() error {
		b.ResetTimer()
		for i := range b.N {
			name := names[i%len(names)]
			t0 := time.Now()
			if err := fns[name](); err != nil {
				return err
			}
			took[name] = append(took[name], time.Since(t0))
		}
		return nil
	})
	for _, name := range names {
		ds := took[name]
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Nanoseconds())/1e3, name+"-µs")
	}
}

// BenchmarkHasOtherPort is DEL's test for another attachment on the
// bridge, against Ports, which it replaced: with N Pier ports it stops at
// the first, where Ports reads and parses all of them.
func BenchmarkHasOtherPort(b *testing.B) {
	for _, ports := range []int{1, 1000} {
		b.Run(fmt.Sprintf("ports=%d", ports), func(b *testing.B) {
			sb := testnet.New(b)
			br := ensure(b, sb, Config{Name: "br-test"})
			portfill.Add(b, sb, br, ports)
			sb.MustDo(b, func() error {
				for i := range ports { // portfill's ports carry no alias
					if err := netlink.LinkSetAlias(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("vport%d", i)}}, "pier:bench"); err != nil {
						return err
					}
				}
				return nil
			})
			alternate(b, sb, map[string]func() error{
				"HasOtherPort": func() error { _, err := HasOtherPort(br.Name, "", "pier:"); return err },
				"Ports":        func() error { _, err := Ports(br.Name); return err },
			})
		})
	}
}
