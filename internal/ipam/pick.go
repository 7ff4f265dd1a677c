package ipam

import (
	"context"
	"iter"
	"net/netip"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// ctxCheckEvery is how many candidates a scan examines between checks of
// its context, so a scan of a large, nearly full pool still honours the
// caller's deadline without paying for a check per address.
const ctxCheckEvery = 1024

// req is one range set's share of an ADD.
type req struct {
	set    int
	owner  Owner
	held   []netip.Addr // what owner already holds, verified
	wanted netip.Addr   // a requested address in this set, or zero
}

// pick returns owner's address in range set r.set: the one it holds there,
// else the requested one, else the next free one. isNew reports whether it
// still has to be reserved.
func (a *storeAllocator) pick(ctx context.Context, tx store.ReadTx, r req) (addr netip.Addr, isNew bool, err error) {
	set := a.conf.RangeSets[r.set]
	for _, h := range r.held {
		if !set.Contains(h) {
			continue
		}
		if r.wanted.IsValid() && r.wanted != h {
			return netip.Addr{}, false, cnierr.New(cnierr.AddressUnavailable,
				"%s already holds %s in range set %d, but %s was requested; DEL it first", r.owner, h, r.set, r.wanted)
		}
		return h, false, nil
	}
	if r.wanted.IsValid() {
		return r.wanted, true, checkRequested(tx, r.wanted)
	}
	addr, err = a.nextFree(ctx, tx, r.set)
	return addr, err == nil, err
}

// checkRequested refuses a requested address someone holds, naming them.
func checkRequested(tx store.ReadTx, addr netip.Addr) error {
	holder, held, err := tx.Holder(addr)
	switch {
	case err != nil:
		return cnierr.Wrap(err, cnierr.AddressUnavailable, "requested address %s is held by an unreadable record", addr)
	case held:
		return cnierr.New(cnierr.AddressUnavailable, "requested address %s is held by %s", addr, holder)
	}
	return nil
}

// nextFree returns the first free candidate after the range set's last
// reserved address, or a code-102 error when the range set has none.
func (a *storeAllocator) nextFree(ctx context.Context, tx store.ReadTx, set int) (netip.Addr, error) {
	n := 0
	for addr := range candidates(a.conf.RangeSets[set], tx.LastReserved(set), a.gateways) {
		if n++; n%ctxCheckEvery == 0 && ctx.Err() != nil {
			return netip.Addr{}, cnierr.Wrap(ctx.Err(), cnierr.TryAgainLater, "searching range set %d for a free address", set)
		}
		// An unreadable record counts as held: never hand out an address
		// that may be someone's.
		if _, held, err := tx.Holder(addr); !held && err == nil {
			return addr, nil
		}
	}
	return netip.Addr{}, cnierr.New(cnierr.PoolExhausted, "range set %d (%s) of network %q has no free address",
		set, a.conf.RangeSets[set], a.conf.Name)
}

// candidates yields every allocatable address of set exactly once: starting
// after last when a range of set holds it (else at the first range's start),
// up to the range's end, then on to the next range, wrapping round.
// Gateways are skipped.
func candidates(set config.RangeSet, last netip.Addr, gateways map[netip.Addr]bool) iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		ri, addr := 0, set[0].RangeStart
		if i, ok := set.RangeFor(last); ok {
			ri, addr = step(set, i, last)
		}
		firstRi, first := ri, addr
		for {
			if !gateways[addr] && !yield(addr) {
				return
			}
			ri, addr = step(set, ri, addr)
			if ri == firstRi && addr == first {
				return
			}
		}
	}
}

// step returns the candidate after addr, which lies in range ri of set.
func step(set config.RangeSet, ri int, addr netip.Addr) (int, netip.Addr) {
	if addr == set[ri].RangeEnd {
		ri = (ri + 1) % len(set)
		return ri, set[ri].RangeStart
	}
	return ri, addr.Next()
}

// ownedBy returns the addresses owner holds: the entries of its index whose
// record names it. An unreadable index falls back to a scan of all records,
// so even then no address of owner's is missed.
func ownedBy(tx store.ReadTx, owner Owner) ([]netip.Addr, error) {
	listed, err := tx.Listed(owner)
	if err != nil {
		return scanOwned(tx, owner)
	}
	var held []netip.Addr
	for _, addr := range listed {
		if h, ok, err := tx.Holder(addr); ok && err == nil && h == owner {
			held = append(held, addr)
		}
	}
	return held, nil
}

func scanOwned(tx store.ReadTx, owner Owner) ([]netip.Addr, error) {
	res, err := tx.Reservations()
	if err != nil {
		return nil, err
	}
	var held []netip.Addr
	for _, r := range res {
		if r.Err == nil && r.Owner == owner {
			held = append(held, r.Addr)
		}
	}
	return held, nil
}
