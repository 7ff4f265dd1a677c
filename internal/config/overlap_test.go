package config

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

// countingAddr is a netip.Addr whose comparisons are counted, so a test
// can tell how much work the overlap search does without timing it.
type countingAddr struct {
	a netip.Addr
	n *int
}

func (c countingAddr) Compare(o countingAddr) int {
	*c.n++
	return c.a.Compare(o.a)
}

// addr4 returns 10.0.0.0 + n.
func addr4(n uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

// TestOverlapCheckIsNotQuadratic guards the cost of validating ranges:
// comparing every pair took 7.5 s for 32k ranges (a config, or a request
// on pierd's socket, could hold that many). The search must stay within a
// small multiple of n·log2(n) comparisons — a few million here, where
// every pair is half a billion.
func TestOverlapCheckIsNotQuadratic(t *testing.T) {
	const n = 1 << 15
	count := 0
	spans := make([]span[countingAddr], n)
	for i := range spans {
		// Disjoint ranges of 3 addresses, shuffled: an odd multiplier
		// permutes 0..n-1 modulo a power of two.
		k := uint32(i) * 2654435761 % n
		spans[i] = span[countingAddr]{start: countingAddr{addr4(4 * k), &count}, end: countingAddr{addr4(4*k + 2), &count}, set: i}
	}
	if _, _, ok := firstOverlap(spans); ok {
		t.Fatal("found an overlap among disjoint ranges")
	}
	limit := 4 * n * bits.Len(n)
	t.Logf("%d ranges: %d comparisons (every pair would be %d)", n, count, n*(n-1)/2)
	if count > limit {
		t.Errorf("%d comparisons for %d ranges, want at most %d (4·n·log2 n)", count, n, limit)
	}
}

// TestFirstOverlapMatchesPairwise compares the search with the plain
// pairwise check on random range sets, both families mixed.
func TestFirstOverlapMatchesPairwise(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 2000 {
		var spans []span[netip.Addr]
		for i := range 1 + r.IntN(8) {
			s := uint32(r.IntN(64))
			e := s + uint32(r.IntN(6))
			lo, hi := addr4(s), addr4(e)
			if r.IntN(3) == 0 {
				lo, hi = netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(s)}), netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(e)})
			}
			spans = append(spans, span[netip.Addr]{start: lo, end: hi, set: i / 3, idx: i % 3})
		}
		x, y, got := firstOverlap(spans)
		want := false
		for i := range spans {
			for j := i + 1; j < len(spans); j++ {
				if spans[i].start.Compare(spans[j].end) <= 0 && spans[j].start.Compare(spans[i].end) <= 0 {
					want = true
				}
			}
		}
		if got != want {
			t.Fatalf("trial %d: %v: overlap %v, pairwise says %v", trial, spans, got, want)
		}
		overlapping := x.start.Compare(y.end) <= 0 && y.start.Compare(x.end) <= 0
		if got && (y.before(x) || !overlapping) {
			t.Fatalf("trial %d: %v: reported %v and %v, which do not overlap in config order", trial, spans, x, y)
		}
	}
}

func TestCheckOverlapsTable(t *testing.T) {
	rs := func(specs ...string) RangeSet {
		var set RangeSet
		for _, s := range specs {
			sub, rng, _ := strings.Cut(s, " ")
			p := netip.MustParsePrefix(sub)
			r := Range{Subnet: p, RangeStart: p.Addr().Next(), RangeEnd: lastUsable(p), Gateway: p.Addr().Next()}
			if lo, hi, ok := strings.Cut(rng, "-"); ok {
				r.RangeStart, r.RangeEnd = netip.MustParseAddr(lo), netip.MustParseAddr(hi)
			}
			set = append(set, r)
		}
		return set
	}
	cases := []struct {
		name string
		sets []RangeSet
		want string // "" for no overlap, else the message's start
	}{
		{"one range", []RangeSet{rs("10.0.0.0/24")}, ""},
		{"adjacent", []RangeSet{rs("10.0.0.0/24 10.0.0.1-10.0.0.99", "10.0.0.0/24 10.0.0.100-10.0.0.200")}, ""},
		{"touching at one address", []RangeSet{rs("10.0.0.0/24 10.0.0.1-10.0.0.100", "10.0.0.0/24 10.0.0.100-10.0.0.200")}, "range 10.0.0.1-10.0.0.100 (range set 0) overlaps range 10.0.0.100-10.0.0.200 (range set 0)"},
		{"contained, listed second", []RangeSet{rs("10.0.0.0/16"), rs("10.0.5.0/24")}, "range 10.0.0.1-10.0.255.254 (range set 0) overlaps range 10.0.5.1-10.0.5.254 (range set 1)"},
		{"contained, listed first", []RangeSet{rs("10.0.5.0/24"), rs("10.0.0.0/16")}, "range 10.0.5.1-10.0.5.254 (range set 0) overlaps range 10.0.0.1-10.0.255.254 (range set 1)"},
		{"inside a long one after a short one", []RangeSet{rs("10.0.0.0/16", "10.1.0.0/24"), rs("10.0.200.0/24")}, "range 10.0.0.1-10.0.255.254 (range set 0) overlaps range 10.0.200.1-10.0.200.254 (range set 1)"},
		{"families apart", []RangeSet{rs("10.0.0.0/24"), rs("fd00::/120"), rs("::/120")}, ""},
		{"v6 overlap", []RangeSet{rs("fd00::/64"), rs("fd00::/120")}, "range fd00::1-fd00::ffff:ffff:ffff:ffff (range set 0) overlaps range fd00::1-fd00::ff (range set 1)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkOverlaps(c.sets)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case c.want != "" && (err == nil || err.Error() != c.want || cnierr.CodeOf(err) != cnierr.InvalidConfig):
				t.Fatalf("got %v, want code 7 %q", err, c.want)
			}
		})
	}
}

// BenchmarkCheckOverlaps validates 32k disjoint ranges, the case that took
// 7.5 s with the pairwise check.
func BenchmarkCheckOverlaps(b *testing.B) {
	var set RangeSet
	for i := range uint32(1 << 15) {
		p := netip.PrefixFrom(addr4(4*i), 30)
		set = append(set, Range{Subnet: p, RangeStart: p.Addr().Next(), RangeEnd: p.Addr().Next().Next(), Gateway: p.Addr().Next()})
	}
	sets := []RangeSet{set}
	for b.Loop() {
		if err := checkOverlaps(sets); err != nil {
			b.Fatal(fmt.Sprint(err))
		}
	}
}
