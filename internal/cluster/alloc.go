package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pier-cni/pier/internal/cnierr"
)

// Batching and retry bounds.
const (
	// MaxBatch is the most calls one transaction carries.
	MaxBatch = 256
	// MaxRetries bounds the retries of a batch whose compare-and-swap lost.
	MaxRetries = 5
	// BlockGrace is how long an empty block stays with its node.
	BlockGrace = 10 * time.Minute
	// DrainEvery is how often queued releases are retried.
	DrainEvery = time.Second
)

type opKind int

const (
	opAdd opKind = iota
	opDel
	opGC
	opCheck
)

// op is one call for the allocator's goroutine.
type op struct {
	kind  opKind
	owner Alloc
	pools []int          // opAdd: the cluster CIDR index for each address wanted
	want  []netip.Addr   // opAdd: a requested address per pool (invalid: any)
	valid map[Alloc]bool // opGC: owners to keep (of owner.Network)
	queue bool           // opDel: queue the release when etcd is down
	done  chan opResult
}

type opResult struct {
	addrs    []netip.Addr
	released int
	err      error
}

// ownBlock is one of the node's blocks as last committed.
type ownBlock struct {
	b    *Block
	rev  int64
	hint netip.Addr // last address handed out (round robin)
}

// Allocator hands out addresses from the node's blocks. One goroutine
// (loop) owns blocks and owners; calls reach it through ops.
type Allocator struct {
	cli   *clientv3.Client
	cfg   Config
	node  string
	ip    netip.Addr
	mem   *membership
	log   *slog.Logger
	queue string // path of the release queue
	grace time.Duration

	ops chan *op

	// Owned by loop.
	blocks map[netip.Prefix]*ownBlock
	owners map[Alloc][]netip.Addr
	queued map[Alloc]bool // releases waiting for etcd
	stats  *Stats
}

// Stats counts what the allocator did (for measurements).
type Stats struct {
	mu           sync.Mutex
	Transactions int
	Allocations  int
}

func newAllocator(cli *clientv3.Client, cfg Config, mem *membership, dataDir string, grace time.Duration, log *slog.Logger) *Allocator {
	if grace <= 0 {
		grace = BlockGrace
	}
	a := &Allocator{grace: grace,
		cli: cli, cfg: cfg, node: mem.node.Name, ip: mem.node.IP, mem: mem, log: log,
		queue:  filepath.Join(dataDir, "cluster-del-queue.json"),
		ops:    make(chan *op, 4*MaxBatch),
		blocks: map[netip.Prefix]*ownBlock{}, owners: map[Alloc][]netip.Addr{}, queued: map[Alloc]bool{},
		stats: &Stats{},
	}
	a.loadQueue()
	return a
}

// load reads the node's blocks from etcd (after a start or a conflict).
func (a *Allocator) load(ctx context.Context) error {
	all, _, err := ListBlocks(ctx, a.cli)
	if err != nil {
		return err
	}
	hints := map[netip.Prefix]netip.Addr{}
	for p, ob := range a.blocks {
		hints[p] = ob.hint
	}
	a.blocks = map[netip.Prefix]*ownBlock{}
	a.owners = map[Alloc][]netip.Addr{}
	for p, rb := range all {
		if rb.b.Node != a.node {
			continue
		}
		a.blocks[p] = &ownBlock{b: rb.b, rev: rb.rev, hint: hints[p]}
		for addr, o := range rb.b.Holdings() {
			a.owners[o] = append(a.owners[o], addr)
		}
	}
	return nil
}

// call submits o and waits for its result or ctx.
func (a *Allocator) call(ctx context.Context, o *op) opResult {
	o.done = make(chan opResult, 1)
	select {
	case a.ops <- o:
	case <-ctx.Done():
		return opResult{err: cnierr.Wrap(ctx.Err(), cnierr.TryAgainLater, "pierd is busy")}
	}
	select {
	case r := <-o.done:
		return r
	case <-ctx.Done():
		return opResult{err: cnierr.Wrap(ctx.Err(), cnierr.TryAgainLater, "pierd did not answer in time")}
	}
}

// run is the allocator's goroutine.
func (a *Allocator) run(ctx context.Context) {
	loaded := false
	drain := time.NewTicker(DrainEvery)
	defer drain.Stop()
	for {
		var batch []*op
		select {
		case <-ctx.Done():
			return
		case o := <-a.ops:
			batch = append(batch, o)
		case <-drain.C:
			if len(a.queued) == 0 && loaded {
				a.giveBackEmpty(ctx)
				continue
			}
		}
	more:
		for len(batch) < MaxBatch {
			select {
			case o := <-a.ops:
				batch = append(batch, o)
			default:
				break more
			}
		}
		if !loaded {
			lctx, cancel := context.WithTimeout(ctx, OpTimeout)
			err := a.load(lctx)
			cancel()
			if err != nil {
				a.fail(batch, err)
				continue
			}
			loaded = true
		}
		for o := range a.queued {
			batch = append(batch, &op{kind: opDel, owner: o, done: make(chan opResult, 1)})
		}
		a.process(ctx, batch)
	}
}

// fail answers every op of batch with etcd's unavailability: adds fail
// with code 11; releases are queued.
func (a *Allocator) fail(batch []*op, err error) {
	for _, o := range batch {
		if o.kind == opDel && o.queue {
			a.enqueue(o.owner)
			o.done <- opResult{}
			continue
		}
		if o.kind == opDel && a.queued[o.owner] {
			o.done <- opResult{}
			continue
		}
		o.done <- opResult{err: unavailable(err)}
	}
}

func unavailable(err error) error {
	if cnierr.CodeOf(err) != 0 && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return cnierr.Wrap(err, cnierr.TryAgainLater, "etcd is unreachable")
}

// batchState is one attempt at a batch: copies of the blocks it changed.
type batchState struct {
	a       *Allocator
	dirty   map[netip.Prefix]*Block
	owners  map[Alloc][]netip.Addr // owners whose holdings changed (nil slice: none)
	results []opResult
	now     time.Time
}

func (s *batchState) block(p netip.Prefix) *Block {
	if b, ok := s.dirty[p]; ok {
		return b
	}
	b := s.a.blocks[p].b.Clone()
	b.NodeIP = s.a.nextHop(p) // a node IP given since the block's claim
	s.dirty[p] = b
	return b
}

func (s *batchState) holds(o Alloc) []netip.Addr {
	if h, ok := s.owners[o]; ok {
		return h
	}
	return s.a.owners[o]
}

// process runs a batch: every op against copies of the blocks, then one
// commit; a lost compare-and-swap reloads and retries.
func (a *Allocator) process(ctx context.Context, batch []*op) {
	for attempt := 0; ; attempt++ {
		s := &batchState{a: a, dirty: map[netip.Prefix]*Block{}, owners: map[Alloc][]netip.Addr{},
			results: make([]opResult, len(batch)), now: time.Now()}
		for i, o := range batch {
			s.results[i] = s.apply(ctx, o)
		}
		if len(s.dirty) == 0 {
			a.answer(batch, s, nil)
			return
		}
		var ws []blockWrite
		for _, p := range sortedPrefixes(s.dirty) {
			ws = append(ws, blockWrite{cidr: p, b: s.dirty[p], rev: a.blocks[p].rev})
		}
		cctx, cancel := context.WithTimeout(ctx, OpTimeout)
		rev, err := commit(cctx, a.cli, ws)
		cancel()
		a.stats.mu.Lock()
		a.stats.Transactions++
		a.stats.mu.Unlock()
		if err == nil {
			a.log.Debug("batch committed", "ops", len(batch), "blocks", len(ws), "rev", rev)
			for p, b := range s.dirty {
				a.blocks[p].b, a.blocks[p].rev = b, rev
			}
			for o, h := range s.owners {
				if len(h) == 0 {
					delete(a.owners, o)
				} else {
					a.owners[o] = h
				}
			}
			a.answer(batch, s, nil)
			return
		}
		if errors.Is(err, ErrConflict) && attempt < MaxRetries {
			lctx, cancel := context.WithTimeout(ctx, OpTimeout)
			lerr := a.load(lctx)
			cancel()
			if lerr == nil {
				continue
			}
			err = lerr
		}
		a.log.Warn("etcd commit failed", "err", err, "ops", len(batch))
		a.answer(batch, s, err)
		return
	}
}

// answer replies to every op; with commitErr set, nothing was written.
func (a *Allocator) answer(batch []*op, s *batchState, commitErr error) {
	added := 0
	for i, o := range batch {
		r := s.results[i]
		if commitErr != nil && r.err == nil {
			switch {
			case o.kind == opDel && (o.queue || a.queued[o.owner]):
				a.enqueue(o.owner)
				r = opResult{}
			default:
				r = opResult{err: unavailable(commitErr)}
			}
		} else if r.err == nil && o.kind == opDel && a.queued[o.owner] {
			delete(a.queued, o.owner)
			a.saveQueue()
		}
		if o.kind == opAdd && r.err == nil {
			added++
		}
		o.done <- r
	}
	a.stats.mu.Lock()
	a.stats.Allocations += added
	a.stats.mu.Unlock()
}

// apply runs one op against the batch's copies.
func (s *batchState) apply(ctx context.Context, o *op) opResult {
	switch o.kind {
	case opAdd:
		if s.a.queued[o.owner] { // re-ADD while its release waits: keep the addresses
			delete(s.a.queued, o.owner)
			s.a.saveQueue()
		}
		return s.add(ctx, o)
	case opDel:
		return opResult{released: s.release(o.owner)}
	case opCheck:
		if s.a.queued[o.owner] {
			return opResult{} // its release waits for etcd: held by nobody
		}
		return opResult{addrs: slices.Clone(s.holds(o.owner))}
	case opGC:
		n := 0
		for owner := range s.a.owners {
			if owner.Network == o.owner.Network && !o.valid[owner] {
				n += s.release(owner)
			}
		}
		return opResult{released: n}
	}
	return opResult{err: fmt.Errorf("unknown op %d", o.kind)}
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
				return opResult{err: cnierr.New(cnierr.AddressUnavailable, "requested %s, but container %s (%s) already holds %s", want, o.owner.ContainerID, o.owner.IfName, held[j])}
			}
			out[i] = held[j]
			continue
		}
		var addr netip.Addr
		var err error
		if want.IsValid() {
			addr, err = s.takeAddr(ctx, cidr, want, o.owner)
		} else {
			addr, err = s.take(ctx, cidr, o.owner)
		}
		if err != nil {
			for _, t := range taken { // nothing of a failed op stays
				s.block(s.blockOf(t)).Release(t, o.owner, s.now)
			}
			return opResult{err: err}
		}
		taken = append(taken, addr)
		out[i] = addr
	}
	if len(taken) > 0 {
		s.owners[o.owner] = append(slices.Clone(held), taken...)
	}
	return opResult{addrs: out}
}

func (s *batchState) blockOf(addr netip.Addr) netip.Prefix {
	for p := range s.a.blocks {
		if p.Contains(addr) {
			return p
		}
	}
	return netip.Prefix{}
}

// take allocates one address of cidr in the node's blocks, claiming a new
// block when they are full.
func (s *batchState) take(ctx context.Context, cidr netip.Prefix, owner Alloc) (netip.Addr, error) {
	for _, p := range sortedPrefixes(s.a.blocks) {
		if !cidr.Contains(p.Addr()) {
			continue
		}
		ob := s.a.blocks[p]
		if _, wasDirty := s.dirty[p]; !wasDirty && len(ob.b.Allocs) >= Capacity(p) {
			continue // full and unchanged: no copy, nothing to write
		}
		if addr, ok := s.block(p).Take(owner, ob.hint); ok {
			ob.hint = addr
			return addr, nil
		}
	}
	p, err := s.a.claimBlock(ctx, cidr)
	if err != nil {
		return netip.Addr{}, err
	}
	addr, _ := s.block(p).Take(owner, netip.Addr{})
	s.a.blocks[p].hint = addr
	return addr, nil
}

// takeAddr allocates the requested address want of cidr: in one of the
// node's blocks, or in a free block the node claims for it.
func (s *batchState) takeAddr(ctx context.Context, cidr netip.Prefix, want netip.Addr, owner Alloc) (netip.Addr, error) {
	p := netip.PrefixFrom(want, s.a.cfg.BlockBits(cidr)).Masked()
	if _, own := s.a.blocks[p]; !own {
		if err := s.a.claimThis(ctx, p); err != nil {
			return netip.Addr{}, err
		}
	}
	if err := s.block(p).TakeAddr(owner, want); err != nil {
		return netip.Addr{}, cnierr.Wrap(err, cnierr.AddressUnavailable, "requested address %s", want)
	}
	return want, nil
}

// claimThis claims block p (for a requested address); it fails with
// AddressUnavailable when another node holds p.
func (a *Allocator) claimThis(ctx context.Context, p netip.Prefix) error {
	b := &Block{CIDR: p, Node: a.node, NodeIP: a.nextHop(p), EmptySince: time.Now().UTC()}
	cctx, cancel := context.WithTimeout(ctx, OpTimeout)
	rev, ok, holder, err := a.mem.claimHolder(cctx, b)
	cancel()
	switch {
	case errors.Is(err, errNoLease):
		return cnierr.Wrap(err, cnierr.TryAgainLater, "node %s is not registered in etcd yet", a.node)
	case err != nil:
		return unavailable(err)
	case !ok:
		return cnierr.New(cnierr.AddressUnavailable, "the requested address's block %s belongs to node %s: request an address in a block of node %s or in a free block", p, holder, a.node)
	}
	a.log.Info("claimed block", "block", p, "for", "requested address")
	a.blocks[p] = &ownBlock{b: b, rev: rev}
	return nil
}

// nextHop is the node address other nodes route block p via: the IPv6
// node IP for an IPv6 block when the node has one.
func (a *Allocator) nextHop(p netip.Prefix) netip.Addr {
	if !p.Addr().Is4() && a.mem.node.IP6.IsValid() {
		return a.mem.node.IP6
	}
	return a.ip
}

// claimBlock claims the lowest free block of cidr for the node.
func (a *Allocator) claimBlock(ctx context.Context, cidr netip.Prefix) (netip.Prefix, error) {
	bits := a.cfg.BlockBits(cidr)
	for attempt := 0; attempt < 16; attempt++ {
		lctx, cancel := context.WithTimeout(ctx, OpTimeout)
		taken, err := TakenBlocks(lctx, a.cli)
		cancel()
		if err != nil {
			return netip.Prefix{}, unavailable(err)
		}
		p, ok := NextFreeBlock(cidr, bits, taken)
		if !ok {
			return netip.Prefix{}, cnierr.New(cnierr.PoolExhausted, "cluster CIDR %s has no free /%d block", cidr, bits)
		}
		// Empty from its claim: a claim whose first allocation is never
		// committed does not leak the block.
		b := &Block{CIDR: p, Node: a.node, NodeIP: a.nextHop(p), EmptySince: time.Now().UTC()}
		cctx, cancel := context.WithTimeout(ctx, OpTimeout)
		rev, ok, err := a.mem.claim(cctx, b)
		cancel()
		switch {
		case errors.Is(err, errNoLease):
			return netip.Prefix{}, cnierr.Wrap(err, cnierr.TryAgainLater, "node %s is not registered in etcd yet", a.node)
		case err != nil:
			return netip.Prefix{}, unavailable(err)
		case ok:
			a.log.Info("claimed block", "block", p)
			a.blocks[p] = &ownBlock{b: b, rev: rev}
			return p, nil
		}
		// Another node won that block: look again.
	}
	return netip.Prefix{}, cnierr.New(cnierr.TryAgainLater, "could not claim a block of %s: too much contention", cidr)
}

// release frees everything owner holds; it returns how many addresses.
func (s *batchState) release(owner Alloc) int {
	held := s.holds(owner)
	n := 0
	for _, addr := range held {
		if p := s.blockOf(addr); p.IsValid() && s.block(p).Release(addr, owner, s.now) {
			n++
		}
	}
	if len(held) > 0 {
		s.owners[owner] = nil
	}
	return n
}

// giveBackEmpty deletes blocks empty for longer than the grace period, keeping
// at least one block per cluster CIDR.
func (a *Allocator) giveBackEmpty(ctx context.Context) {
	for _, cidr := range a.cfg.CIDRs {
		var mine []netip.Prefix
		for _, p := range sortedPrefixes(a.blocks) {
			if cidr.Contains(p.Addr()) {
				mine = append(mine, p)
			}
		}
		for _, p := range mine[min(1, len(mine)):] {
			ob := a.blocks[p]
			if len(ob.b.Allocs) > 0 || ob.b.EmptySince.IsZero() || time.Since(ob.b.EmptySince) < a.grace {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, OpTimeout)
			_, err := commit(cctx, a.cli, []blockWrite{{cidr: p, rev: ob.rev}})
			cancel()
			if err == nil {
				delete(a.blocks, p)
				a.log.Info("gave back an empty block", "block", p)
			}
		}
	}
}

// enqueue records a release to do when etcd answers again.
func (a *Allocator) enqueue(o Alloc) {
	if a.queued[o] {
		return
	}
	a.queued[o] = true
	a.saveQueue()
}

func (a *Allocator) saveQueue() {
	list := make([]Alloc, 0, len(a.queued))
	for o := range a.queued {
		list = append(list, o)
	}
	b, _ := json.Marshal(list)
	tmp := a.queue + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		err = os.Rename(tmp, a.queue)
		if err != nil {
			a.log.Warn("cannot save the release queue", "err", err)
		}
	}
}

func (a *Allocator) loadQueue() {
	b, err := os.ReadFile(a.queue)
	if err != nil {
		return
	}
	var list []Alloc
	if json.Unmarshal(b, &list) == nil {
		for _, o := range list {
			a.queued[o] = true
		}
	}
}
