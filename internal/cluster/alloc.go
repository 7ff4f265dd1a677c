package cluster

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
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
	// DrainEvery is how often queued releases are retried, and how often
	// etcd is probed while it is believed unreachable.
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
// (run) owns blocks, owners and the release queue; calls reach it through
// ops.
type Allocator struct {
	cli   *clientv3.Client
	cfg   Config
	node  string
	ip    netip.Addr
	mem   *membership
	log   *slog.Logger
	grace time.Duration

	ops    chan *op
	probed chan error // answers of etcd probes made while it seemed down

	// Owned by run.
	loaded   bool
	blocks   map[netip.Prefix]*ownBlock
	owners   map[Alloc][]netip.Addr
	queue    *releaseQueue
	etcdDown bool // the last etcd operation failed: probe before draining
	probing  bool // a probe is in flight
	stats    *Stats
}

// Stats counts what the allocator did (for measurements).
type Stats struct {
	mu           sync.Mutex
	Transactions int
	Allocations  int
}

func newAllocator(cli *clientv3.Client, cfg Config, mem *membership, dataDir string, grace time.Duration, log *slog.Logger) (*Allocator, error) {
	if grace <= 0 {
		grace = BlockGrace
	}
	q, err := openQueue(filepath.Join(dataDir, queueFile))
	if err != nil {
		return nil, err
	}
	return &Allocator{grace: grace,
		cli: cli, cfg: cfg, node: mem.node.Name, ip: mem.node.IP, mem: mem, log: log,
		ops: make(chan *op, 4*MaxBatch), probed: make(chan error, 1),
		blocks: map[netip.Prefix]*ownBlock{}, owners: map[Alloc][]netip.Addr{}, queue: q,
		stats: &Stats{},
	}, nil
}

// load reads the node's blocks from etcd (after a start or a conflict),
// and turns releases queued before the first read into exact ones.
func (a *Allocator) load(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, OpTimeout)
	all, _, err := ListBlocks(lctx, a.cli)
	cancel()
	if err != nil {
		a.etcdDown = true
		return unavailable(err)
	}
	a.etcdDown = false
	hints := map[netip.Prefix]netip.Addr{}
	for p, ob := range a.blocks {
		hints[p] = ob.hint
	}
	a.blocks = map[netip.Prefix]*ownBlock{}
	a.owners = map[Alloc][]netip.Addr{}
	held := map[Alloc]map[netip.Addr]Allocation{}
	for p, rb := range all {
		if rb.b.Node != a.node {
			continue
		}
		a.blocks[p] = &ownBlock{b: rb.b, rev: rb.rev, hint: hints[p]}
		for addr, al := range rb.b.Holdings() {
			a.owners[al.Alloc] = append(a.owners[al.Alloc], addr)
			if held[al.Alloc] == nil {
				held[al.Alloc] = map[netip.Addr]Allocation{}
			}
			held[al.Alloc][addr] = al
		}
	}
	a.loaded = true
	if err := a.queue.resolve(held); err != nil {
		a.log.Error("queued releases resolved, but not written to disk", "err", err)
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
	tick := time.NewTicker(DrainEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-a.probed:
			a.probing = false
			if err == nil {
				a.etcdDown = false
				a.drain(ctx)
			}
		case <-tick.C:
			a.tick(ctx)
		case o := <-a.ops:
			a.serve(ctx, a.collect(o))
		}
	}
}

// collect returns o and every call waiting behind it, up to MaxBatch.
func (a *Allocator) collect(o *op) []*op {
	batch := []*op{o}
	for len(batch) < MaxBatch {
		select {
		case o := <-a.ops:
			batch = append(batch, o)
		default:
			return batch
		}
	}
	return batch
}

// tick drains queued releases — at once when etcd answered last time,
// else once a probe (in the background, so that calls are not held up)
// finds it back — or gives back empty blocks.
func (a *Allocator) tick(ctx context.Context) {
	switch {
	case !a.queue.empty() && a.etcdDown:
		a.probe(ctx)
	case !a.queue.empty():
		a.drain(ctx)
	case a.loaded && !a.etcdDown:
		a.giveBackEmpty(ctx)
	}
}

// probe asks etcd for the cluster settings in the background; run gets
// the answer on a.probed.
func (a *Allocator) probe(ctx context.Context) {
	if a.probing {
		return
	}
	a.probing = true
	go func() {
		pctx, cancel := context.WithTimeout(ctx, OpTimeout)
		_, err := a.cli.Get(pctx, configKey)
		cancel()
		a.probed <- err
	}()
}

// drain applies the queued releases in a transaction of their own.
func (a *Allocator) drain(ctx context.Context) {
	if a.queue.empty() {
		return
	}
	if !a.loaded {
		if err := a.load(ctx); err != nil {
			return
		}
	}
	a.process(ctx, nil)
}

// serve answers a batch: checks from memory, the rest in one transaction.
func (a *Allocator) serve(ctx context.Context, batch []*op) {
	if !a.loaded {
		if err := a.load(ctx); err != nil {
			a.failUnloaded(batch, err)
			return
		}
	}
	writes := batch[:0:0]
	for _, o := range batch {
		if o.kind == opCheck {
			o.done <- opResult{addrs: a.holds(o.owner)}
			continue
		}
		writes = append(writes, o)
	}
	if len(writes) > 0 {
		a.process(ctx, writes)
	}
}

// holds returns what owner holds in the node's committed blocks, less
// allocations whose release is queued (they belong to an attachment the
// runtime has deleted, whatever its owner key).
func (a *Allocator) holds(owner Alloc) []netip.Addr {
	var out []netip.Addr
	for _, addr := range a.owners[owner] {
		if rec, ok := a.record(addr); ok && !a.queue.holds(addr, rec) {
			out = append(out, addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// record returns the committed allocation at addr.
func (a *Allocator) record(addr netip.Addr) (Allocation, bool) {
	for p, ob := range a.blocks {
		if p.Contains(addr) {
			rec, ok := ob.b.Allocs[addr.String()]
			return rec, ok
		}
	}
	return Allocation{}, false
}

// failUnloaded answers a batch while the node's blocks cannot be read:
// releases are queued under their owner (resolved at the first read),
// everything else fails with code 11.
func (a *Allocator) failUnloaded(batch []*op, err error) {
	for _, o := range batch {
		if o.kind != opDel || !o.queue {
			o.done <- opResult{err: err}
			continue
		}
		if qerr := a.queue.add(queued{Alloc: o.owner}); qerr != nil {
			o.done <- opResult{err: queueError(err, qerr)}
			continue
		}
		o.done <- opResult{}
	}
}

// queueError is the answer to a DEL whose release could not be written
// to the queue: failing is the only way to have the runtime retry it.
func queueError(etcdErr, qerr error) error {
	return cnierr.Wrap(errors.Join(etcdErr, qerr), cnierr.IOFailure,
		"etcd is unreachable and the release cannot be queued on disk")
}

func unavailable(err error) error {
	var coded *cnierr.Error
	if errors.As(err, &coded) {
		return err
	}
	return cnierr.Wrap(err, cnierr.TryAgainLater, "etcd is unreachable or refused the request")
}

// process runs a batch against copies of the node's blocks — the queued
// releases first, then every op — and commits every changed block in one
// transaction; a lost compare-and-swap reloads and retries.
func (a *Allocator) process(ctx context.Context, batch []*op) {
	for attempt := 0; ; attempt++ {
		s := a.newBatch(len(batch))
		if !a.etcdDown {
			s.drainQueue()
		}
		for i, o := range batch {
			s.results[i] = s.apply(ctx, i, o)
		}
		err := a.commitBatch(ctx, s)
		if errors.Is(err, ErrConflict) && attempt < MaxRetries {
			if lerr := a.load(ctx); lerr == nil {
				continue
			}
		}
		a.finish(batch, s, err)
		return
	}
}

// errEtcdDown stands for a commit not tried: etcd failed last time, and
// the batch holds only releases, which can wait in the queue.
var errEtcdDown = errors.New("etcd did not answer the last request")

// commitBatch writes the batch's changed blocks, if any, and adopts them.
func (a *Allocator) commitBatch(ctx context.Context, s *batchState) error {
	if len(s.dirty) == 0 {
		return nil
	}
	if a.etcdDown && !s.needsEtcd {
		return errEtcdDown
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
	if err != nil {
		if !errors.Is(err, ErrConflict) {
			a.etcdDown = true
			a.log.Warn("etcd commit failed", "err", err, "blocks", len(ws))
		}
		return err
	}
	a.etcdDown = false
	a.log.Debug("batch committed", "blocks", len(ws), "rev", rev)
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
	return nil
}

// finish replies to every op. With commitErr set nothing was written:
// adds and GCs fail with code 11, releases are queued (exactly the
// allocations each would have released), and the queued releases the
// batch drained stay queued.
func (a *Allocator) finish(batch []*op, s *batchState, commitErr error) {
	if commitErr == nil && len(s.drained) > 0 {
		if err := a.queue.remove(s.drained); err != nil {
			// The entries are gone from memory; left on disk they are
			// found stale (their allocation gone) after a restart.
			a.log.Error("drained releases not removed from the queue file", "err", err)
		}
		a.log.Info("queued releases applied", "count", len(s.drained))
	}
	added := 0
	for i, o := range batch {
		r := s.results[i]
		switch {
		case r.err != nil:
		case o.kind == opDel && o.queue && (commitErr != nil || a.queue.unsaved && !a.queue.empty()):
			r = a.enqueue(s.released[i], commitErr)
		case commitErr != nil:
			r = opResult{err: unavailable(commitErr)}
		case o.kind == opAdd:
			added++
		}
		o.done <- r
	}
	a.stats.mu.Lock()
	a.stats.Allocations += added
	a.stats.mu.Unlock()
}

// enqueue queues the releases of a DEL that etcd did not take, and is the
// DEL's answer: success once they are on disk. A DEL that finds queued
// releases not yet on disk (an earlier write failed) writes them too, and
// fails while it cannot: its own release may be among them.
func (a *Allocator) enqueue(entries []queued, etcdErr error) opResult {
	if etcdErr == nil {
		etcdErr = errEtcdDown
	}
	if err := a.queue.add(entries...); err != nil {
		return opResult{err: queueError(etcdErr, err)}
	}
	a.log.Info("etcd unreachable: release queued", "addresses", len(entries))
	return opResult{released: len(entries)}
}
