package cluster

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pier-cni/pier/internal/routing"
)

// Routing modes.
const (
	ModeHostGW = routing.ModeHostGW
	ModeVXLAN  = routing.ModeVXLAN
)

// Default block sizes.
const (
	DefaultBlock4 = 26
	DefaultBlock6 = 122
)

// Config is the cluster's settings, /pier/config.
type Config struct {
	CIDRs      []netip.Prefix `json:"cidrs"`
	BlockSize4 int            `json:"blockSize4"`
	BlockSize6 int            `json:"blockSize6"`
	Mode       string         `json:"mode"`
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if c.BlockSize4 == 0 {
		c.BlockSize4 = DefaultBlock4
	}
	if c.BlockSize6 == 0 {
		c.BlockSize6 = DefaultBlock6
	}
	if c.Mode == "" {
		c.Mode = ModeHostGW
	}
	if c.Mode != ModeHostGW && c.Mode != ModeVXLAN {
		return fmt.Errorf("mode %q: want %s or %s", c.Mode, ModeHostGW, ModeVXLAN)
	}
	if len(c.CIDRs) == 0 || len(c.CIDRs) > 2 {
		return fmt.Errorf("want one IPv4 and/or one IPv6 cluster CIDR, got %d", len(c.CIDRs))
	}
	seen := map[bool]bool{}
	for i, p := range c.CIDRs {
		p = p.Masked()
		c.CIDRs[i] = p
		if seen[p.Addr().Is4()] {
			return fmt.Errorf("two cluster CIDRs of one family")
		}
		seen[p.Addr().Is4()] = true
		bs := c.BlockBits(p)
		if bs < p.Bits() || bs > p.Addr().BitLen()-2 {
			return fmt.Errorf("block size /%d does not fit cluster CIDR %s", bs, p)
		}
		if p.Addr().BitLen()-bs > 16 {
			return fmt.Errorf("block size /%d is too large (at most 65536 addresses)", bs)
		}
	}
	if c.BlockSize4 < 8 || c.BlockSize4 > 30 || c.BlockSize6 < 112 || c.BlockSize6 > 126 {
		return fmt.Errorf("block sizes /%d and /%d: want /8../30 and /112../126", c.BlockSize4, c.BlockSize6)
	}
	return nil
}

// BlockBits is the prefix length of cidr's blocks.
func (c *Config) BlockBits(cidr netip.Prefix) int {
	if cidr.Addr().Is4() {
		return c.BlockSize4
	}
	return c.BlockSize6
}

// Alloc is one allocation's owner: a network's attachment.
type Alloc struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Allocation is one address's record in its block: its owner, and an
// identity of its own (random, made when the address is taken). A release
// queued while etcd is down names the identity, so draining it frees that
// allocation and never a later one of the same owner (a runtime that
// reuses a container ID and interface name for the next ADD). Records
// written before identities existed have an empty ID.
type Allocation struct {
	Alloc
	ID string `json:"id,omitempty"`
}

// Block is /pier/blocks/<addr>-<bits>: a block, its node and its
// allocations, keyed by address.
type Block struct {
	CIDR   netip.Prefix          `json:"cidr"`
	Node   string                `json:"node"`
	NodeIP netip.Addr            `json:"nodeIP"`
	Allocs map[string]Allocation `json:"allocs,omitempty"`
	// EmptySince is when the block last became empty (zero: not empty or
	// never used); the owning node gives it back after BlockGrace.
	EmptySince time.Time `json:"emptySince,omitzero"`
}

// Clone returns a deep copy.
func (b *Block) Clone() *Block {
	c := *b
	c.Allocs = make(map[string]Allocation, len(b.Allocs))
	for k, v := range b.Allocs {
		c.Allocs[k] = v
	}
	return &c
}

// Gateway is the block's gateway: its first host address.
func (b *Block) Gateway() netip.Addr { return b.CIDR.Addr().Next() }

// hosts yields the allocatable addresses: not the network address, the
// gateway or (IPv4) the broadcast address.
func hostRange(p netip.Prefix) (first, last netip.Addr) {
	first = p.Addr().Next().Next()
	last = lastAddr(p)
	if p.Addr().Is4() {
		last = last.Prev()
	}
	return first, last
}

// Capacity is how many addresses a block of p's size can hand out.
func Capacity(p netip.Prefix) int {
	n := 1 << (p.Addr().BitLen() - p.Bits())
	if p.Addr().Is4() {
		return n - 3
	}
	return n - 2
}

// Take allocates the first free address after hint (round robin), records
// a there and returns it; false when the block is full.
func (b *Block) Take(a Allocation, hint netip.Addr) (netip.Addr, bool) {
	first, last := hostRange(b.CIDR)
	start := first
	if hint.IsValid() && b.CIDR.Contains(hint) && hint.Compare(first) >= 0 && hint.Compare(last) < 0 {
		start = hint.Next()
	}
	addr := start
	for range Capacity(b.CIDR) {
		if _, held := b.Allocs[addr.String()]; !held {
			b.put(addr, a)
			return addr, true
		}
		if addr == last {
			addr = first
		} else {
			addr = addr.Next()
		}
	}
	return netip.Addr{}, false
}

// TakeAddr records a at addr (a requested address). It fails with the
// reason when addr is not allocatable in the block or is held; the caller
// deals with an address its owner already holds.
func (b *Block) TakeAddr(a Allocation, addr netip.Addr) error {
	first, last := hostRange(b.CIDR)
	if !b.CIDR.Contains(addr) || addr.Compare(first) < 0 || addr.Compare(last) > 0 {
		return fmt.Errorf("%s is reserved in block %s (network, gateway %s or broadcast address)", addr, b.CIDR, b.Gateway())
	}
	if h, held := b.Allocs[addr.String()]; held {
		return fmt.Errorf("%s is held by container %s (%s) on node %s", addr, h.ContainerID, h.IfName, b.Node)
	}
	b.put(addr, a)
	return nil
}

func (b *Block) put(addr netip.Addr, a Allocation) {
	if b.Allocs == nil {
		b.Allocs = map[string]Allocation{}
	}
	b.Allocs[addr.String()] = a
	b.EmptySince = time.Time{}
}

// Release frees addr if the allocation there is a: the same owner and the
// same identity.
func (b *Block) Release(addr netip.Addr, a Allocation, now time.Time) bool {
	if cur, ok := b.Allocs[addr.String()]; !ok || cur != a {
		return false
	}
	delete(b.Allocs, addr.String())
	if len(b.Allocs) == 0 {
		b.EmptySince = now.UTC()
	}
	return true
}

// Holdings returns every allocation of the block by address.
func (b *Block) Holdings() map[netip.Addr]Allocation {
	out := make(map[netip.Addr]Allocation, len(b.Allocs))
	for k, v := range b.Allocs {
		if a, err := netip.ParseAddr(k); err == nil {
			out[a] = v
		}
	}
	return out
}

// BlockKey is the etcd key of block p.
func BlockKey(p netip.Prefix) string {
	return blocksPrefix + p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// ParseBlockKey is BlockKey's inverse.
func ParseBlockKey(k string) (netip.Prefix, error) {
	s, ok := strings.CutPrefix(k, blocksPrefix)
	i := strings.LastIndexByte(s, '-')
	if !ok || i < 0 {
		return netip.Prefix{}, fmt.Errorf("key %q is not a block key", k)
	}
	return netip.ParsePrefix(s[:i] + "/" + s[i+1:])
}

// NextFreeBlock returns the lowest block of cidr (of blockBits) that is
// not in taken; false when every block is taken.
func NextFreeBlock(cidr netip.Prefix, blockBits int, taken map[netip.Prefix]bool) (netip.Prefix, bool) {
	count := uint64(1) << min(blockBits-cidr.Bits(), 63)
	size := uint64(1) << (cidr.Addr().BitLen() - blockBits)
	// At most len(taken)+1 candidates are examined.
	for i := uint64(0); i < count && i <= uint64(len(taken)); i++ {
		p := netip.PrefixFrom(addOffset(cidr.Addr(), i*size), blockBits)
		if !taken[p] {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// addOffset returns a+off (off fits the host part of a block index).
func addOffset(a netip.Addr, off uint64) netip.Addr {
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:]) + uint32(off)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	nlo := lo + off
	if nlo < lo {
		hi++
	}
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], nlo)
	return netip.AddrFrom16(b)
}

func lastAddr(p netip.Prefix) netip.Addr {
	return addOffset(p.Masked().Addr(), (uint64(1)<<(p.Addr().BitLen()-p.Bits()))-1)
}

// sortedPrefixes returns the keys of m in address order.
func sortedPrefixes[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}
