// Package ipam allocates addresses from a network's range sets.
//
// # One contract, several allocators
//
// Allocator is what hands out a network's addresses to attachments and
// takes them back: Allocate, Release, Check, List, GC, Status. Three
// implementations sit side by side, and every caller talks to the
// interface only:
//
//   - Local (this package): the crash-safe file store under a data dir
//     (package store). The plugins run it in their own process (local
//     mode); pierd serves it over its socket (daemon mode).
//   - lite.Client (internal/ipamrpc/lite): the plugins asking pierd.
//   - cluster.Cluster (internal/cluster): pierd in cluster mode, blocks of
//     a cluster-wide range in etcd.
//
// pierd's gRPC server (internal/ipamrpc) serves any Allocator, and
// AllocateResult turns what an Allocator hands out into a CNI result, so
// the plugin's semantics (idempotent ADD, code 3 from CHECK, codes 101 and
// 102, DEL of nothing is success) are the same in every mode.
//
// # The allocation policy
//
// Local's policy (storeAllocator) is pure logic over a store.Store: every
// call runs inside one Update (or View), so it sees and changes the
// reservations under the store's lock. The policy is host-local's, with two
// changes: an ADD for an owner that already holds addresses returns them
// (the reference fails), and a requested address held by someone else
// names the holder.
//
// Allocation is round-robin per range set: start after the range set's last
// reserved address, wrap at the end, skip gateways (of every range of the
// network: the bridge holds them). A just-released address is therefore not
// reused until the pool has gone round, and in the common case the first
// candidate is free, so an ADD reads a handful of files whatever the number
// of reservations.
package ipam

import (
	"context"
	"net/netip"

	"github.com/pier-cni/pier/internal/config"
)

// Owner identifies an attachment: container ID and interface name.
type Owner = config.Owner

// Allocator hands out a network's addresses to attachments and takes them
// back.
//
// Every method names the network by its validated IPAM config and reads
// only its Name and RangeSets (and Requested, for Allocate): an
// implementation may serve ranges its caller supplies for each call.
// Errors carry the CNI codes of README's table (package cnierr): 11 when
// the allocator cannot be reached or is busy, 101 and 102 from Allocate, 3
// from Check, 50 from Status.
type Allocator interface {
	// Allocate gives owner one address per range set, in range set order,
	// honouring net.Requested (each requested address goes to the range
	// set holding it). An owner that already holds addresses gets the same
	// ones back. On failure nothing this call reserved stays.
	Allocate(ctx context.Context, net *config.IPAMConfig, owner Owner) ([]Address, error)
	// Release frees everything owner holds in the network and says how
	// many addresses that was; holding nothing is success.
	Release(ctx context.Context, net *config.IPAMConfig, owner Owner) (released int, err error)
	// Check returns the addresses owner holds; code 3 when it holds none.
	Check(ctx context.Context, net *config.IPAMConfig, owner Owner) ([]netip.Addr, error)
	// List returns every reservation of the network, in address order,
	// with the range set of net holding each.
	List(ctx context.Context, net *config.IPAMConfig) ([]Reservation, error)
	// GC releases every reservation whose owner is not in valid (an empty
	// valid releases all) and says how many addresses that was.
	GC(ctx context.Context, net *config.IPAMConfig, valid []Owner) (released int, err error)
	// Status returns nil when an ADD can be served now, else a code-50
	// error saying why (or code 11: ask again later).
	Status(ctx context.Context, net *config.IPAMConfig) error
}

// Inventory is implemented by allocators that can name the networks they
// hold reservations of, for reports that name no network (pierctl leases,
// pierctl status).
type Inventory interface {
	Networks(ctx context.Context) ([]string, error)
}

// Address is one address handed out by Allocate.
type Address struct {
	// Prefix is the address with its subnet's prefix length (in cluster
	// mode, its block's), as the container's interface gets it.
	Prefix netip.Prefix
	// Gateway is the range's (or block's) gateway; zero when none.
	Gateway netip.Addr
	// RangeSet is the index in the config's range sets it was drawn from.
	RangeSet int
}

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

// RangeSetOf returns the index of the range set of net holding addr, or -1.
func RangeSetOf(net *config.IPAMConfig, addr netip.Addr) int {
	for i, set := range net.RangeSets {
		if set.Contains(addr) {
			return i
		}
	}
	return -1
}

// Observer is told what each call of a Local changed, for metrics.
type Observer interface {
	// Changed reports how many addresses one call reserved and released in
	// network (releases include GC's; a reboot purge is not counted).
	Changed(network string, reserved, released int)
}
