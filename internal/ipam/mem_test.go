package ipam

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// memStore is an in-memory store.Store for allocator tests. It follows the
// file store's contract, including tolerated states, which tests create by
// writing the maps directly.
type memStore struct {
	sem     chan struct{} // one slot: the store's lock
	records map[netip.Addr]memRecord
	indexes map[Owner][]netip.Addr
	last    map[int]netip.Addr
	// holderCalls counts Holder lookups, to show how much an ADD reads.
	holderCalls int
}

type memRecord struct {
	owner Owner
	err   error // non-nil: an unreadable record
}

func newMemStore() *memStore {
	return &memStore{
		sem:     make(chan struct{}, 1),
		records: map[netip.Addr]memRecord{},
		indexes: map[Owner][]netip.Addr{},
		last:    map[int]netip.Addr{},
	}
}

func (m *memStore) Update(ctx context.Context, fn func(tx store.Tx) error) error {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return cnierr.Wrap(ctx.Err(), cnierr.TryAgainLater, "memory store busy")
	}
	defer func() { <-m.sem }()
	return fn(m)
}

func (m *memStore) View(ctx context.Context, fn func(tx store.ReadTx) error) error {
	return m.Update(ctx, func(tx store.Tx) error { return fn(tx) })
}

func (m *memStore) Holder(addr netip.Addr) (Owner, bool, error) {
	m.holderCalls++
	r, ok := m.records[addr]
	if !ok {
		return Owner{}, false, nil
	}
	return r.owner, true, r.err
}

func (m *memStore) Listed(o Owner) ([]netip.Addr, error) {
	return slices.Clone(m.indexes[o]), nil
}

func (m *memStore) LastReserved(set int) netip.Addr { return m.last[set] }

func (m *memStore) Reservations() ([]store.Reservation, error) {
	var res []store.Reservation
	for a, r := range m.records {
		res = append(res, store.Reservation{Addr: a, Owner: r.owner, Err: r.err})
	}
	return res, nil
}

func (m *memStore) Indexes() ([]store.Index, error) {
	var idx []store.Index
	for o, addrs := range m.indexes {
		idx = append(idx, store.Index{Owner: o, Addrs: slices.Clone(addrs)})
	}
	return idx, nil
}

func (m *memStore) Reserve(o Owner, claims []store.Claim) error {
	for _, c := range claims {
		if !slices.Contains(m.indexes[o], c.Addr) {
			m.indexes[o] = append(m.indexes[o], c.Addr)
		}
	}
	for _, c := range claims {
		if _, ok := m.records[c.Addr]; ok {
			return store.ErrTaken
		}
	}
	for _, c := range claims {
		m.records[c.Addr] = memRecord{owner: o}
		m.last[c.Set] = c.Addr
	}
	return nil
}

func (m *memStore) Release(addr netip.Addr, o Owner) error {
	if r, ok := m.records[addr]; ok && r.err == nil && r.owner == o {
		delete(m.records, addr)
	}
	return nil
}

func (m *memStore) Discard(addr netip.Addr) error {
	delete(m.records, addr)
	return nil
}

func (m *memStore) DropIndex(o Owner) error {
	for a, r := range m.records {
		if r.err == nil && r.owner == o {
			return errors.New("memStore: DropIndex while " + a.String() + " still names " + o.String())
		}
	}
	delete(m.indexes, o)
	return nil
}

func (m *memStore) Sweep() error { return nil }

// checkInvariant returns an error when a record is not listed in its
// owner's index: the one state the store must never reach.
func (m *memStore) checkInvariant() error {
	for a, r := range m.records {
		if r.err == nil && !slices.Contains(m.indexes[r.owner], a) {
			return errors.New(a.String() + " is not in the index of " + r.owner.String())
		}
	}
	return nil
}
