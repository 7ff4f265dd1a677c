package config

import (
	"math"
	"net/netip"
)

// Size is the number of addresses of r that can be handed out: the range
// [RangeStart, RangeEnd] less its gateway when the gateway lies inside,
// saturated at 2^64-1 for huge IPv6 ranges ("at least that many").
func (r Range) Size() uint64 {
	n := AddrDiff(r.RangeStart, r.RangeEnd)
	if n == math.MaxUint64 {
		return n
	}
	n++
	if r.Contains(r.Gateway) {
		n--
	}
	return n
}

// AddrDiff returns b-a for b >= a of one family, saturated at MaxUint64.
// It works on the two 64-bit halves, so no big-number arithmetic is needed.
func AddrDiff(a, b netip.Addr) uint64 {
	x, y := a.As16(), b.As16()
	var hiA, hiB, loA, loB uint64
	for i := range 8 {
		hiA, hiB = hiA<<8|uint64(x[i]), hiB<<8|uint64(y[i])
		loA, loB = loA<<8|uint64(x[i+8]), loB<<8|uint64(y[i+8])
	}
	hi := hiB - hiA
	if loB < loA {
		hi--
	}
	if hi != 0 {
		return math.MaxUint64
	}
	return loB - loA
}
