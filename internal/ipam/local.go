package ipam

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// Local is the Allocator over the local file store: each network's
// reservations live under <dataDir>/<network>/ (package store), so a
// process killed at any instruction loses nothing, and plugins in local
// mode and pierd in daemon mode can share a network.
//
// A Local serves any number of calls at once. Calls for one network queue
// in memory, one at a time, before they take the store's lock: in pierd
// they would otherwise each park a thread in flock(2). The store's lock
// still orders them against other processes.
type Local struct {
	dataDir  string
	observer Observer

	mu   sync.Mutex // guards nets
	nets map[string]*localNet
}

// localNet is one network's store and its in-memory queue.
type localNet struct {
	store *store.File
	sem   chan struct{} // one slot: the call being served
}

// LocalOptions configures a Local.
type LocalOptions struct {
	Observer Observer // nil: no one is told
}

// NewLocal returns the allocator over the stores under dataDir.
func NewLocal(dataDir string, o LocalOptions) *Local {
	return &Local{dataDir: dataDir, observer: o.Observer, nets: map[string]*localNet{}}
}

// Allocate implements Allocator.
func (l *Local) Allocate(ctx context.Context, net *config.IPAMConfig, owner Owner) ([]Address, error) {
	var out []Address
	_, err := l.do(ctx, net, func(a *storeAllocator) error {
		var err error
		out, err = a.Allocate(ctx, owner)
		return err
	})
	return out, err
}

// Release implements Allocator.
func (l *Local) Release(ctx context.Context, net *config.IPAMConfig, owner Owner) (int, error) {
	return l.do(ctx, net, func(a *storeAllocator) error { return a.Release(ctx, owner) })
}

// Check implements Allocator.
func (l *Local) Check(ctx context.Context, net *config.IPAMConfig, owner Owner) ([]netip.Addr, error) {
	var held []netip.Addr
	_, err := l.do(ctx, net, func(a *storeAllocator) error {
		var err error
		held, err = a.Check(ctx, owner)
		return err
	})
	return held, err
}

// GC implements Allocator.
func (l *Local) GC(ctx context.Context, net *config.IPAMConfig, valid []Owner) (int, error) {
	return l.do(ctx, net, func(a *storeAllocator) error { return a.GC(ctx, valid) })
}

// List implements Allocator. A network without a store has no
// reservations, and listing it creates nothing.
func (l *Local) List(ctx context.Context, net *config.IPAMConfig) ([]Reservation, error) {
	if _, err := os.Stat(filepath.Join(l.dataDir, net.Name)); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	var res []Reservation
	_, err := l.do(ctx, net, func(a *storeAllocator) error {
		var err error
		res, err = a.List(ctx)
		return err
	})
	return res, err
}

// Status implements Allocator: the store's directories must be usable
// and every range set must have a free address.
func (l *Local) Status(ctx context.Context, net *config.IPAMConfig) error {
	n, err := l.network(net.Name)
	if err == nil {
		err = n.store.Probe()
	}
	if err != nil {
		return cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %q cannot allocate", net.Name)
	}
	_, err = l.do(ctx, net, func(a *storeAllocator) error { return a.Status(ctx) })
	return err
}

// Networks implements Inventory: every network with a store under the
// data dir.
func (l *Local) Networks(context.Context) ([]string, error) {
	entries, err := os.ReadDir(l.dataDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "read data dir %s", l.dataDir)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && config.ValidateNetworkName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// do runs fn with the policy over net's store once the network admits
// the call, and returns how many addresses fn released; what fn reserved
// and released is reported to the Observer.
func (l *Local) do(ctx context.Context, net *config.IPAMConfig, fn func(*storeAllocator) error) (released int, err error) {
	n, err := l.network(net.Name)
	if err != nil {
		return 0, err
	}
	select {
	case n.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, cnierr.Wrap(ctx.Err(), cnierr.TryAgainLater, "network %q is busy", net.Name)
	}
	defer func() { <-n.sem }()
	cs := &countingStore{Store: n.store}
	err = fn(newStoreAllocator(net, cs))
	if l.observer != nil && (cs.reserved > 0 || cs.released > 0) {
		l.observer.Changed(net.Name, cs.reserved, cs.released)
	}
	return cs.released, err
}

// network returns the state of network name, opening (and creating) its
// store on first use.
func (l *Local) network(name string) (*localNet, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.nets[name]; ok {
		return n, nil
	}
	st, err := store.NewFile(l.dataDir, name)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "open the IPAM store of network %q", name)
	}
	n := &localNet{store: st, sem: make(chan struct{}, 1)}
	l.nets[name] = n
	return n, nil
}
