package kube

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// firstFree returns the lowest /size range of cidr that overlaps none of
// taken. A taken prefix in the way makes the search jump past it, so the
// cost is in the number of taken prefixes, not in the size of cidr (an
// IPv6 /32 holds four billion /64s).
func firstFree(cidr netip.Prefix, size int, taken []netip.Prefix) (netip.Prefix, bool) {
	cidr = cidr.Masked()
	if size < cidr.Bits() || size > cidr.Addr().BitLen() {
		return netip.Prefix{}, false
	}
	cand := netip.PrefixFrom(cidr.Addr(), size)
	for {
		moved := false
		for _, t := range taken {
			if !t.IsValid() || t.Addr().Is4() != cand.Addr().Is4() || !t.Overlaps(cand) {
				continue
			}
			// Past the later of the two ends, aligned to size.
			end := lastOf(cand)
			if e := lastOf(t.Masked()); e.Compare(end) > 0 {
				end = e
			}
			next, ok := alignedAfter(end, size)
			if !ok || !cidr.Contains(next) {
				return netip.Prefix{}, false
			}
			cand, moved = netip.PrefixFrom(next, size), true
		}
		if !moved {
			return cand, true
		}
	}
}

// u128 is an address as a 128-bit number (IPv4 in the low 32 bits).
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func fromU128(v u128, is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(v.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	return netip.AddrFrom16(b)
}

// lastOf is the last address of a masked prefix.
func lastOf(p netip.Prefix) netip.Addr {
	v := toU128(p.Addr())
	host := p.Addr().BitLen() - p.Bits()
	switch {
	case host >= 64:
		v.lo = ^uint64(0)
		v.hi |= (uint64(1) << (host - 64)) - 1 // a shift by 64 is 0 in Go: all ones
	case host > 0:
		v.lo |= (uint64(1) << host) - 1
	}
	return fromU128(v, p.Addr().Is4())
}

// alignedAfter is the first address after a that starts a /size range; ok
// is false past the end of the address space.
func alignedAfter(a netip.Addr, size int) (netip.Addr, bool) {
	is4 := a.Is4()
	v := toU128(lastOf(netip.PrefixFrom(a, size).Masked()))
	var carry uint64
	v.lo, carry = bits.Add64(v.lo, 1, 0)
	v.hi, carry = bits.Add64(v.hi, 0, carry)
	if carry != 0 || (is4 && v.lo > 0xffffffff) {
		return netip.Addr{}, false
	}
	return fromU128(v, is4), true
}
