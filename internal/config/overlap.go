package config

import (
	"net/netip"
	"slices"

	"github.com/pier-cni/pier/internal/cnierr"
)

// checkOverlaps refuses two ranges (in one set or across sets) that share an
// address: the same address would be handed out twice. It costs O(n log n)
// in the number of ranges, so a config (or a pierd request) with tens of
// thousands of ranges is validated in milliseconds.
func checkOverlaps(sets []RangeSet) error {
	var spans []span[netip.Addr]
	for i, s := range sets {
		for j, r := range s {
			spans = append(spans, span[netip.Addr]{start: r.RangeStart, end: r.RangeEnd, set: i, idx: j})
		}
	}
	x, y, ok := firstOverlap(spans)
	if !ok {
		return nil
	}
	rx, ry := sets[x.set][x.idx], sets[y.set][y.idx]
	return cnierr.New(cnierr.InvalidConfig, "range %s (range set %d) overlaps range %s (range set %d)", rx, x.set, ry, y.set)
}

// ordered is what the overlap search needs of an address: a total order.
// netip.Addr orders IPv4 before IPv6, so the two families never interleave.
type ordered[A any] interface {
	Compare(A) int
}

// span is one range's bounds and where it sits in the config.
type span[A ordered[A]] struct {
	start, end A
	set, idx   int
}

// before orders spans by their place in the config.
func (s span[A]) before(o span[A]) bool {
	return s.set < o.set || s.set == o.set && s.idx < o.idx
}

// firstOverlap returns two spans that share an address, the one earlier
// in the config first, or ok=false. Sorted by start, a span overlaps an
// earlier one exactly when it starts at or before the furthest end seen so
// far, and then it overlaps the span that reached that end: one sort and
// one pass.
func firstOverlap[A ordered[A]](spans []span[A]) (x, y span[A], ok bool) {
	if len(spans) < 2 {
		return x, y, false
	}
	sorted := slices.Clone(spans)
	slices.SortFunc(sorted, func(a, b span[A]) int { return a.start.Compare(b.start) })
	reach := sorted[0] // the span reaching furthest so far
	for _, s := range sorted[1:] {
		if reach.end.Compare(s.start) >= 0 {
			if s.before(reach) {
				return s, reach, true
			}
			return reach, s, true
		}
		// No overlap: s starts after every end so far, so it also ends
		// after them.
		reach = s
	}
	return x, y, false
}
