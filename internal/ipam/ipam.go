// Package ipam allocates addresses from a network's range sets.
//
// The policy lives here and is pure logic over a store.Store: every call
// runs inside one Update (or View), so it sees and changes the reservations
// under the store's lock. The policy is host-local's, with two changes: an
// ADD for an owner that already holds addresses returns them (the reference
// fails), and a requested address held by someone else names the holder.
//
// Allocation is round-robin per range set: start after the range set's last
// reserved address, wrap at the end, skip gateways. A just-released address is
// therefore not reused until the pool has gone round, and in the common case
// the first candidate is free, so an ADD reads a handful of files whatever
// the number of reservations.
package ipam

import (
	"context"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// Owner identifies an attachment: container ID and interface name.
type Owner = config.Owner

// Reservation is one reserved address, as List reports it.
type Reservation struct {
	Addr  netip.Addr
	Owner Owner // zero when Problem is set
	// RangeSet is the index in conf.RangeSets holding Addr, or -1 when none
	// does (the ranges changed since the address was reserved).
	RangeSet int
	// Problem is set when the record cannot be read; the address stays held
	// until GC can tell nobody owns it, or an operator removes the file.
	Problem string
}

// Add allocates one address per range set for owner. See Allocator.Add.
func Add(ctx context.Context, conf *config.IPAMConfig, owner Owner) (*current.Result, error) {
	a, err := open(conf)
	if err != nil {
		return nil, err
	}
	return a.Add(ctx, owner)
}

// Del releases everything owner holds in the network; nothing held is success.
func Del(ctx context.Context, conf *config.IPAMConfig, owner Owner) error {
	a, err := open(conf)
	if err != nil {
		return err
	}
	return a.Del(ctx, owner)
}

// Check returns the addresses owner holds; code 3 when it holds none.
func Check(ctx context.Context, conf *config.IPAMConfig, owner Owner) ([]netip.Addr, error) {
	a, err := open(conf)
	if err != nil {
		return nil, err
	}
	return a.Check(ctx, owner)
}

// GC releases every reservation whose owner is not in valid (empty valid
// releases all).
func GC(ctx context.Context, conf *config.IPAMConfig, valid []Owner) error {
	a, err := open(conf)
	if err != nil {
		return err
	}
	return a.GC(ctx, valid)
}

// Status returns nil when an ADD can be served, else a code-50 error saying
// why (a range set with no free address, an unusable store directory).
func Status(ctx context.Context, conf *config.IPAMConfig) error {
	st, err := store.NewFile(conf.DataDir, conf.Name)
	if err != nil {
		return cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %q cannot allocate", conf.Name)
	}
	if err := st.Probe(); err != nil {
		return cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %q cannot allocate", conf.Name)
	}
	return New(conf, st).Status(ctx)
}

// List returns every reservation of the network, in address order.
func List(ctx context.Context, conf *config.IPAMConfig) ([]Reservation, error) {
	a, err := open(conf)
	if err != nil {
		return nil, err
	}
	return a.List(ctx)
}

// open returns the allocator of conf's network over the local file store.
func open(conf *config.IPAMConfig) (*Allocator, error) {
	st, err := store.NewFile(conf.DataDir, conf.Name)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "open the IPAM store of network %q", conf.Name)
	}
	return New(conf, st), nil
}
