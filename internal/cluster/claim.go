package cluster

// Claims and give-backs of the node's blocks: the only etcd writes of the
// allocator besides the batch commit.

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/pier-cni/pier/internal/cnierr"
)

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
		a.etcdDown = true
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
			a.etcdDown = true
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
			a.etcdDown = true
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
			switch {
			case err == nil:
				delete(a.blocks, p)
				a.log.Info("gave back an empty block", "block", p)
			case !errors.Is(err, ErrConflict):
				a.etcdDown = true
				return
			}
		}
	}
}
