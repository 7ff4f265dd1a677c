package ipam

import (
	"context"
	"net/netip"

	"github.com/pier-cni/pier/internal/ipam/store"
)

// countingStore counts what the policy reserves and releases through it,
// for Release's and GC's answers and for the Observer. The reboot purge runs inside the
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
