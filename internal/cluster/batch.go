package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/pier-cni/pier/internal/cnierr"
)

// batchState is one attempt at a batch: copies of the blocks it changed
// and what each op did.
type batchState struct {
	a     *Allocator
	dirty map[netip.Prefix]*Block
	// owners are the owners whose holdings changed, with all their
	// addresses (nil slice: none).
	owners    map[Alloc][]netip.Addr
	results   []opResult
	released  [][]queued   // per op: the allocations a DEL released
	drained   []netip.Addr // queued releases applied (or found gone)
	etcdErr   error        // etcd failed during this batch: no more tries
	needsEtcd bool         // the batch holds more than releases
	now       time.Time
}

func (a *Allocator) newBatch(n int) *batchState {
	return &batchState{a: a, dirty: map[netip.Prefix]*Block{}, owners: map[Alloc][]netip.Addr{},
		results: make([]opResult, n), released: make([][]queued, n), now: time.Now()}
}

// block returns the batch's copy of the node's block p.
func (s *batchState) block(p netip.Prefix) *Block {
	if b, ok := s.dirty[p]; ok {
		return b
	}
	b := s.a.blocks[p].b.Clone()
	b.NodeIP = s.a.nextHop(p) // a node IP given since the block's claim
	s.dirty[p] = b
	return b
}

// recordAt returns the allocation at addr as the batch sees it.
func (s *batchState) recordAt(addr netip.Addr) (Allocation, bool) {
	p := s.blockOf(addr)
	if !p.IsValid() {
		return Allocation{}, false
	}
	b, ok := s.dirty[p]
	if !ok {
		b = s.a.blocks[p].b
	}
	rec, held := b.Allocs[addr.String()]
	return rec, held
}

func (s *batchState) blockOf(addr netip.Addr) netip.Prefix {
	for p := range s.a.blocks {
		if p.Contains(addr) {
			return p
		}
	}
	return netip.Prefix{}
}

// all returns every address of o, queued releases included.
func (s *batchState) all(o Alloc) []netip.Addr {
	if h, ok := s.owners[o]; ok {
		return h
	}
	return s.a.owners[o]
}

// holds returns what o holds, less allocations whose release is queued.
func (s *batchState) holds(o Alloc) []netip.Addr {
	var out []netip.Addr
	for _, addr := range s.all(o) {
		if rec, ok := s.recordAt(addr); ok && !s.a.queue.holds(addr, rec) {
			out = append(out, addr)
		}
	}
	return out
}

func (s *batchState) dropHeld(o Alloc, addr netip.Addr) {
	s.owners[o] = slices.DeleteFunc(slices.Clone(s.all(o)), func(a netip.Addr) bool { return a == addr })
}

// drainQueue applies the queued releases: each frees exactly the
// allocation it names; one whose allocation is already gone (released by
// GC, or its block forgotten) is dropped.
func (s *batchState) drainQueue() {
	for addr, e := range s.a.queue.exact {
		rec, ok := s.recordAt(addr)
		if ok && rec.Alloc == e.Alloc && rec.ID == e.ID {
			s.block(s.blockOf(addr)).Release(addr, rec, s.now)
			s.dropHeld(e.Alloc, addr)
		}
		s.drained = append(s.drained, addr)
	}
}

// apply runs op i against the batch's copies.
func (s *batchState) apply(ctx context.Context, i int, o *op) opResult {
	switch o.kind {
	case opAdd:
		s.needsEtcd = true
		return s.add(ctx, o)
	case opDel:
		s.released[i] = s.release(o.owner, s.holds(o.owner))
		return opResult{released: len(s.released[i])}
	case opGC:
		s.needsEtcd = true
		n := 0
		for _, owner := range s.ownersOf(o.owner.Network) {
			if !o.valid[owner] {
				n += len(s.release(owner, s.all(owner)))
			}
		}
		return opResult{released: n}
	}
	return opResult{err: fmt.Errorf("unknown op %d", o.kind)}
}

// ownersOf returns the owners of network with addresses on this node.
func (s *batchState) ownersOf(network string) []Alloc {
	var out []Alloc
	for o := range s.a.owners {
		if o.Network == network {
			out = append(out, o)
		}
	}
	for o := range s.owners {
		if o.Network == network && !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	return out
}

// release frees addrs of owner and returns the allocations it freed.
func (s *batchState) release(owner Alloc, addrs []netip.Addr) []queued {
	var out []queued
	for _, addr := range addrs {
		rec, ok := s.recordAt(addr)
		if !ok || rec.Alloc != owner {
			continue
		}
		s.block(s.blockOf(addr)).Release(addr, rec, s.now)
		s.dropHeld(owner, addr)
		out = append(out, queued{Alloc: owner, Addr: addr, ID: rec.ID})
	}
	return out
}

func (s *batchState) add(ctx context.Context, o *op) opResult {
	held := s.holds(o.owner)
	out := make([]netip.Addr, len(o.pools))
	var taken []netip.Addr
	for i, pool := range o.pools {
		cidr := s.a.cfg.CIDRs[pool]
		var want netip.Addr
		if i < len(o.want) {
			want = o.want[i]
		}
		if j := slices.IndexFunc(held, cidr.Contains); j >= 0 {
			if want.IsValid() && held[j] != want {
				return s.undoAdd(o.owner, taken, cnierr.New(cnierr.AddressUnavailable,
					"requested %s, but container %s (%s) already holds %s", want, o.owner.ContainerID, o.owner.IfName, held[j]))
			}
			out[i] = held[j]
			continue
		}
		rec := Allocation{Alloc: o.owner, ID: newAllocID()}
		var addr netip.Addr
		var err error
		if want.IsValid() {
			addr, err = s.takeAddr(ctx, cidr, want, rec)
		} else {
			addr, err = s.take(ctx, cidr, rec)
		}
		if err != nil {
			return s.undoAdd(o.owner, taken, err)
		}
		taken = append(taken, addr)
		out[i] = addr
	}
	if len(taken) > 0 {
		s.owners[o.owner] = append(slices.Clone(s.all(o.owner)), taken...)
	}
	return opResult{addrs: out}
}

// undoAdd takes back what a failed add took: nothing of it stays.
func (s *batchState) undoAdd(owner Alloc, taken []netip.Addr, err error) opResult {
	for _, t := range taken {
		if rec, ok := s.recordAt(t); ok {
			s.block(s.blockOf(t)).Release(t, rec, s.now)
		}
	}
	return opResult{err: err}
}

// newAllocID returns a fresh allocation identity: 64 random bits, so two
// allocations of one owner never share one.
func newAllocID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand never fails on Linux
	return hex.EncodeToString(b)
}

// take allocates one address of cidr in the node's blocks, claiming a new
// block when they are full.
func (s *batchState) take(ctx context.Context, cidr netip.Prefix, rec Allocation) (netip.Addr, error) {
	for _, p := range sortedPrefixes(s.a.blocks) {
		if !cidr.Contains(p.Addr()) {
			continue
		}
		ob := s.a.blocks[p]
		if _, wasDirty := s.dirty[p]; !wasDirty && len(ob.b.Allocs) >= Capacity(p) {
			continue // full and unchanged: no copy, nothing to write
		}
		if addr, ok := s.block(p).Take(rec, ob.hint); ok {
			ob.hint = addr
			return addr, nil
		}
	}
	if s.etcdErr != nil {
		return netip.Addr{}, s.etcdErr
	}
	p, err := s.a.claimBlock(ctx, cidr)
	if err != nil {
		if cnierr.CodeOf(err) == cnierr.TryAgainLater {
			s.etcdErr = err
		}
		return netip.Addr{}, err
	}
	addr, _ := s.block(p).Take(rec, netip.Addr{})
	s.a.blocks[p].hint = addr
	return addr, nil
}

// takeAddr allocates the requested address want of cidr: in one of the
// node's blocks, or in a free block the node claims for it.
func (s *batchState) takeAddr(ctx context.Context, cidr netip.Prefix, want netip.Addr, rec Allocation) (netip.Addr, error) {
	p := netip.PrefixFrom(want, s.a.cfg.BlockBits(cidr)).Masked()
	if _, own := s.a.blocks[p]; !own {
		if s.etcdErr != nil {
			return netip.Addr{}, s.etcdErr
		}
		if err := s.a.claimThis(ctx, p); err != nil {
			if cnierr.CodeOf(err) == cnierr.TryAgainLater {
				s.etcdErr = err
			}
			return netip.Addr{}, err
		}
	}
	if cur, ok := s.recordAt(want); ok && s.a.queue.holds(want, cur) {
		return netip.Addr{}, cnierr.New(cnierr.TryAgainLater,
			"requested address %s is being released (its release waits for etcd); try again later", want)
	}
	if err := s.block(p).TakeAddr(rec, want); err != nil {
		return netip.Addr{}, cnierr.Wrap(err, cnierr.AddressUnavailable, "requested address %s", want)
	}
	return want, nil
}
