package nat

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// BenchmarkAddDelMasq measures one container's AddMasq and DelMasq of one
// IPv4 address, with 0 or 1000 other containers' addresses already in the
// set: the cost must not grow with them. "netns-fd" opens each socket in
// the node namespace from the benchmark goroutine; "thread" runs the loop
// on a thread switched into it, as the plugin does.
func BenchmarkAddDelMasq(b *testing.B) {
	for _, existing := range []int{0, 1000} {
		for _, mode := range []string{"netns-fd", "thread"} {
			b.Run(fmt.Sprintf("existing=%d/%s", existing, mode), func(b *testing.B) {
				benchAddDel(b, existing, mode == "thread")
			})
		}
	}
}

func benchAddDel(b *testing.B, existing int, thread bool) {
	sb := testnet.New(b)
	fd := nodeFd(b, sb.Node)
	n := Network{Name: "bench", Subnets: prefixes("10.128.0.0/16")}
	for i := 0; i < existing; i += 200 {
		var batch []netip.Addr
		for j := i; j < min(i+200, existing); j++ {
			batch = append(batch, netip.AddrFrom4([4]byte{10, 128, byte(1 + j/250), byte(1 + j%250)}))
		}
		if err := AddMasq(n, batch, fmt.Sprintf("filler-%d/eth0", i), InNetNS(fd)); err != nil {
			b.Fatal(err)
		}
	}
	a := addrs("10.128.0.2")
	var add, del time.Duration
	loop := func(opts ...Option) error {
		for b.Loop() {
			t0 := time.Now()
			if err := AddMasq(n, a, "bench/eth0", opts...); err != nil {
				return err
			}
			t1 := time.Now()
			if err := DelMasq(n, a, opts...); err != nil {
				return err
			}
			add, del = add+t1.Sub(t0), del+time.Since(t1)
		}
		return nil
	}
	var err error
	if thread {
		err = sb.Node.Do(func() error { return loop() })
	} else {
		err = loop(InNetNS(fd))
	}
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(add.Microseconds())/float64(b.N), "add-µs/op")
	b.ReportMetric(float64(del.Microseconds())/float64(b.N), "del-µs/op")
}
