package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// storeAllocator is the allocation policy: conf's range sets applied to
// one network's store. It holds no state of its own; any number of them
// may share a store.
type storeAllocator struct {
	conf  *config.IPAMConfig
	store store.Store
	// gateways are the gateways of every range of the network: the bridge
	// holds them, so none is ever handed out, whichever range set it
	// belongs to (two range sets of one family may share a subnet).
	gateways map[netip.Addr]bool
}

// newStoreAllocator returns the policy of conf's network over st.
func newStoreAllocator(conf *config.IPAMConfig, st store.Store) *storeAllocator {
	a := &storeAllocator{conf: conf, store: st, gateways: map[netip.Addr]bool{}}
	for _, set := range conf.RangeSets {
		for _, r := range set {
			a.gateways[r.Gateway] = true
		}
	}
	return a
}

// Allocate allocates one address per range set for owner, honouring
// conf.Requested (each requested address goes to the range set holding it).
// An owner that already holds an address in a range set keeps it: a repeated
// ADD returns the same addresses. On failure nothing this call reserved
// stays.
func (a *storeAllocator) Allocate(ctx context.Context, owner Owner) ([]Address, error) {
	if err := checkOwner(owner); err != nil {
		return nil, err
	}
	wanted, err := a.assignRequested()
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	err = a.store.Update(ctx, func(tx store.Tx) error {
		addrs, err = a.allocate(ctx, tx, owner, wanted)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]Address, len(addrs))
	for i, addr := range addrs {
		out[i] = a.address(i, addr)
	}
	return out, nil
}

// allocate picks one address per range set, then reserves the new ones in
// one step, so a failure (an exhausted set, an unavailable requested
// address) leaves nothing behind.
func (a *storeAllocator) allocate(ctx context.Context, tx store.Tx, owner Owner, wanted []netip.Addr) ([]netip.Addr, error) {
	held, err := ownedBy(tx, owner)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, len(a.conf.RangeSets))
	var claims []store.Claim
	for i := range a.conf.RangeSets {
		addr, isNew, err := a.pick(ctx, tx, req{set: i, owner: owner, held: held, wanted: wanted[i]})
		if err != nil {
			return nil, err
		}
		if isNew {
			claims = append(claims, store.Claim{Addr: addr, Set: i})
		}
		out[i] = addr
	}
	if len(claims) == 0 {
		return out, nil
	}
	if err := tx.Reserve(owner, claims); err != nil {
		if errors.Is(err, store.ErrTaken) {
			// Only a writer bypassing the lock can take a free address
			// between our read and our write.
			return nil, cnierr.Wrap(err, cnierr.TryAgainLater, "an address of network %q changed hands during ADD", a.conf.Name)
		}
		return nil, fmt.Errorf("reserve %v for %s: %w", claims, owner, err)
	}
	return out, nil
}

// address renders addr of range set i: with its range's subnet length and
// gateway.
func (a *storeAllocator) address(i int, addr netip.Addr) Address {
	set := a.conf.RangeSets[i]
	r := set[0]
	if ri, ok := set.RangeFor(addr); ok {
		r = set[ri]
	}
	return Address{Prefix: netip.PrefixFrom(addr, r.Subnet.Bits()), Gateway: r.Gateway, RangeSet: i}
}

// assignRequested maps each requested address to the range set holding it.
// The result has one entry per range set; the zero Addr means "any".
func (a *storeAllocator) assignRequested() ([]netip.Addr, error) {
	wanted := make([]netip.Addr, len(a.conf.RangeSets))
	for _, addr := range a.conf.Requested {
		i := a.rangeSetOf(addr)
		switch {
		case i < 0:
			return nil, cnierr.New(cnierr.AddressUnavailable,
				"requested address %s is outside every range of network %q (%s)", addr, a.conf.Name, a.describeRanges())
		case wanted[i].IsValid():
			return nil, cnierr.New(cnierr.AddressUnavailable,
				"requested addresses %s and %s are both in range set %d (%s); one address is allocated per range set",
				wanted[i], addr, i, a.conf.RangeSets[i])
		case a.gateways[addr]:
			return nil, cnierr.New(cnierr.AddressUnavailable,
				"requested address %s is a gateway of network %q (%s)", addr, a.conf.Name, a.describeRanges())
		}
		wanted[i] = addr
	}
	return wanted, nil
}

// rangeSetOf returns the index of the range set holding addr, or -1.
func (a *storeAllocator) rangeSetOf(addr netip.Addr) int {
	for i, set := range a.conf.RangeSets {
		if set.Contains(addr) {
			return i
		}
	}
	return -1
}

func (a *storeAllocator) describeRanges() string {
	s := ""
	for i, set := range a.conf.RangeSets {
		if i > 0 {
			s += "; "
		}
		s += set.String()
	}
	return s
}

// checkOwner refuses an owner that cannot name a record; such values come
// from CNI_CONTAINERID and CNI_IFNAME.
func checkOwner(o Owner) error {
	if err := store.ValidOwner(o); err != nil {
		return cnierr.Wrap(err, cnierr.InvalidEnv, "CNI_CONTAINERID %q / CNI_IFNAME %q", o.ContainerID, o.IfName)
	}
	return nil
}
