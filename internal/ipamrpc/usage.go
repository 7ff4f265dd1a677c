package ipamrpc

import (
	"context"
	"net/netip"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipam/store"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
)

// countingStore counts what the allocator reserves and releases through it,
// for metrics and Release/GC responses. The reboot purge runs inside the
// file store, below this wrapper, and is not counted.
type countingStore struct {
	store.Store
	reserved, released int
}

func (c *countingStore) Update(ctx context.Context, fn func(tx store.Tx) error) error {
	return c.Store.Update(ctx, func(tx store.Tx) error { return fn(&countingTx{Tx: tx, c: c}) })
}

type countingTx struct {
	store.Tx
	c *countingStore
}

func (t *countingTx) Reserve(o store.Owner, claims []store.Claim) error {
	err := t.Tx.Reserve(o, claims)
	if err == nil {
		t.c.reserved += len(claims)
	}
	return err
}

// Release counts only a record that named o: Release leaves others alone.
func (t *countingTx) Release(addr netip.Addr, o store.Owner) error {
	h, held, herr := t.Tx.Holder(addr)
	err := t.Tx.Release(addr, o)
	if err == nil && held && herr == nil && h == o {
		t.c.released++
	}
	return err
}

func (t *countingTx) Discard(addr netip.Addr) error {
	_, held, _ := t.Tx.Holder(addr) // an unreadable record is held too: counted
	err := t.Tx.Discard(addr)
	if err == nil && held {
		t.c.released++
	}
	return err
}

// poolUsage counts reservations per range of sets. A reservation with an
// unreadable record counts as used: its address is held.
func poolUsage(sets []config.RangeSet, res []ipam.Reservation) []*ipamv1.PoolUsage {
	var out []*ipamv1.PoolUsage
	type pos struct{ set, rng int }
	index := map[pos]int{}
	for i, set := range sets {
		for j, r := range set {
			index[pos{i, j}] = len(out)
			out = append(out, &ipamv1.PoolUsage{
				RangeSet: uint32(i), Subnet: r.Subnet.String(),
				RangeStart: r.RangeStart.String(), RangeEnd: r.RangeEnd.String(),
				Size: r.Size(),
			})
		}
	}
	for _, rv := range res {
		for i, set := range sets {
			if j, ok := set.RangeFor(rv.Addr); ok {
				out[index[pos{i, j}]].Used++
				break
			}
		}
	}
	return out
}
