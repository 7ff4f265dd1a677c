package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// Release releases everything owner holds. Holding nothing is success, so a
// repeated DEL, or a DEL after a failed ADD, succeeds. It reads only owner's
// index (no scan) unless that index is unreadable.
func (a *storeAllocator) Release(ctx context.Context, owner Owner) error {
	if err := checkOwner(owner); err != nil {
		return err
	}
	return a.store.Update(ctx, func(tx store.Tx) error {
		listed, err := tx.Listed(owner)
		if err != nil {
			// Release what parsed, and whatever a scan attributes to owner.
			scanned, serr := scanOwned(tx, owner)
			if serr != nil {
				return errors.Join(err, serr)
			}
			listed = append(listed, scanned...)
		}
		var errs []error
		for _, addr := range listed {
			// Release leaves records naming someone else (an interrupted
			// ADD can leave such entries in owner's index).
			errs = append(errs, tx.Release(addr, owner))
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("release addresses of %s: %w", owner, err)
		}
		return tx.DropIndex(owner)
	})
}

// Check returns the addresses owner holds, or a code-3 error naming owner.
func (a *storeAllocator) Check(ctx context.Context, owner Owner) ([]netip.Addr, error) {
	if err := checkOwner(owner); err != nil {
		return nil, err
	}
	var held []netip.Addr
	err := a.store.View(ctx, func(tx store.ReadTx) error {
		var err error
		held, err = ownedBy(tx, owner)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(held) == 0 {
		return nil, cnierr.New(cnierr.UnknownContainer,
			"container %s (interface %s) holds no address in network %q", owner.ContainerID, owner.IfName, a.conf.Name)
	}
	return held, nil
}

// GC releases every reservation whose owner is not in valid; an empty valid
// releases everything. It goes on past errors and returns them joined.
//
// An unreadable record has no known owner. It is discarded only when no
// valid owner's index lists its address (the store's invariant says its
// owner's index does), so GC never frees an address a live container may
// hold; when a valid owner's index is itself unreadable, such records stay.
func (a *storeAllocator) GC(ctx context.Context, valid []Owner) error {
	keep := make(map[Owner]bool, len(valid))
	for _, o := range valid {
		keep[o] = true
	}
	return a.store.Update(ctx, func(tx store.Tx) error {
		res, err := tx.Reservations()
		if err != nil {
			return err
		}
		indexes, err := tx.Indexes()
		if err != nil {
			return err
		}
		claimed, sure := claimedBy(indexes, keep)
		var errs []error
		failed := map[Owner]bool{}
		for _, r := range res {
			switch {
			case r.Err != nil && sure && !claimed[r.Addr]:
				errs = append(errs, tx.Discard(r.Addr))
			case r.Err == nil && !keep[r.Owner]:
				if err := tx.Release(r.Addr, r.Owner); err != nil {
					errs = append(errs, err)
					failed[r.Owner] = true
				}
			}
		}
		for _, ix := range indexes {
			// An owner whose release failed keeps its index: the index
			// must list every record that still names it.
			if !keep[ix.Owner] && !failed[ix.Owner] {
				errs = append(errs, tx.DropIndex(ix.Owner))
			}
		}
		errs = append(errs, tx.Sweep())
		return errors.Join(errs...)
	})
}

// claimedBy returns the addresses listed by the indexes of owners in keep;
// sure is false when one of those indexes could not be fully read.
func claimedBy(indexes []store.Index, keep map[Owner]bool) (claimed map[netip.Addr]bool, sure bool) {
	claimed = map[netip.Addr]bool{}
	sure = true
	for _, ix := range indexes {
		if !keep[ix.Owner] {
			continue
		}
		if ix.Err != nil {
			sure = false
		}
		for _, addr := range ix.Addrs {
			claimed[addr] = true
		}
	}
	return claimed, sure
}

// Status returns nil when every range set has a free address, else a code-50
// error naming the first that has none (and how many of its addresses are
// held by unreadable records, which an operator may need to remove).
func (a *storeAllocator) Status(ctx context.Context) error {
	err := a.store.View(ctx, func(tx store.ReadTx) error {
		for i := range a.conf.RangeSets {
			_, err := a.nextFree(ctx, tx, i)
			if cnierr.CodeOf(err) != cnierr.PoolExhausted {
				if err != nil {
					return err
				}
				continue
			}
			if bad := a.unreadableIn(tx, i); bad > 0 {
				return fmt.Errorf("%w (%d of its addresses are held by unreadable records)", err, bad)
			}
			return err
		}
		return nil
	})
	if err == nil || cnierr.CodeOf(err) == cnierr.TryAgainLater {
		return err
	}
	return cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %q cannot allocate", a.conf.Name)
}

func (a *storeAllocator) unreadableIn(tx store.ReadTx, set int) int {
	res, err := tx.Reservations()
	if err != nil {
		return 0 // only decorates a message that is being returned anyway
	}
	n := 0
	for _, r := range res {
		if r.Err != nil && a.conf.RangeSets[set].Contains(r.Addr) {
			n++
		}
	}
	return n
}

// List returns every reservation, in address order.
func (a *storeAllocator) List(ctx context.Context) ([]Reservation, error) {
	var out []Reservation
	err := a.store.View(ctx, func(tx store.ReadTx) error {
		res, err := tx.Reservations()
		if err != nil {
			return err
		}
		for _, r := range res {
			rv := Reservation{Addr: r.Addr, Owner: r.Owner, RangeSet: a.rangeSetOf(r.Addr)}
			if r.Err != nil {
				rv.Problem = r.Err.Error()
			}
			out = append(out, rv)
		}
		return nil
	})
	slices.SortFunc(out, func(x, y Reservation) int { return x.Addr.Compare(y.Addr) })
	return out, err
}
