// Package store keeps IPAM reservations for one network and gives the
// allocator exclusive, crash-safe access to them.
//
// The allocator (package ipam) holds the policy; a Store only answers "who
// holds this address", "what does this owner hold" and performs single,
// individually crash-safe steps (reserve one address, release one address,
// drop an owner's index). Update runs a function under the store's exclusive
// lock, so no caller can forget the lock; it does not roll back: a caller
// that fails halfway releases what it reserved, and every intermediate state
// is one the store tolerates (see the invariant below).
//
// Invariant kept across any crash: every address record is listed in its
// owner's index. The converse need not hold: an index may list an address
// whose record is absent or names someone else (a crash between the two
// writes of a reservation); readers verify each listed address against its
// record before trusting it.
package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/pier-cni/pier/internal/config"
)

// Owner is who holds a reservation: a container and its interface.
type Owner = config.Owner

// constErr lets sentinel errors be constants.
type constErr string

func (e constErr) Error() string { return string(e) }

const (
	// ErrTaken: Reserve found the address already held.
	ErrTaken = constErr("address already reserved")
	// ErrCorrupt: a record or index could not be parsed. The address it
	// concerns counts as held, so it is never handed out twice.
	ErrCorrupt = constErr("unparseable record")
)

// Reservation is one address record as stored.
type Reservation struct {
	Addr  netip.Addr
	Owner Owner // zero when Err is set
	Err   error // the record is unreadable; the address counts as held
}

// Index is one owner's list of addresses as stored (unverified).
type Index struct {
	Owner Owner
	Addrs []netip.Addr
	Err   error // part of the index is unreadable; Addrs holds what parsed
}

// ReadTx reads a network's reservations under the store's lock.
type ReadTx interface {
	// Holder returns who holds addr. held is false only when addr is
	// provably free; an unreadable record gives held=true and an error.
	Holder(addr netip.Addr) (owner Owner, held bool, err error)
	// Listed returns the addresses o's index lists, unverified. A missing
	// index is an empty list, not an error.
	Listed(o Owner) ([]netip.Addr, error)
	// LastReserved returns the round-robin hint of range set set, or the
	// zero Addr when there is none or it cannot be read.
	LastReserved(set int) netip.Addr
	// Reservations returns every address record (a full scan).
	Reservations() ([]Reservation, error)
	// Indexes returns every owner index (a full scan).
	Indexes() ([]Index, error)
}

// Claim is one address to reserve and the range set it is drawn from.
type Claim struct {
	Addr netip.Addr
	Set  int
}

// Tx also changes reservations. Each method is one crash-safe step.
type Tx interface {
	ReadTx
	// Reserve records every claim as held by o, or none: first o's index
	// (listing them all), then one record per claim; each claim's address
	// becomes its range set's round-robin hint. ErrTaken when one is held.
	Reserve(o Owner, claims []Claim) error
	// Release removes addr's record if it names o; otherwise it does
	// nothing. o's index is left to DropIndex or the next Reserve.
	Release(addr netip.Addr, o Owner) error
	// Discard removes addr's record whatever it says; for records nobody
	// can own any more (after a reboot, unreadable ones during GC).
	Discard(addr netip.Addr) error
	// DropIndex removes o's index. Callers release o's records first.
	DropIndex(o Owner) error
	// Sweep removes leftovers of writes interrupted by a crash.
	Sweep() error
}

// Store is one network's reservations.
type Store interface {
	// Update runs fn with exclusive access. Lock waits are bounded by ctx's
	// deadline; a timeout is a code-11 error.
	Update(ctx context.Context, fn func(tx Tx) error) error
	// View runs fn with read access.
	View(ctx context.Context, fn func(tx ReadTx) error) error
}

// ValidOwner checks that o can name a record: the owner becomes a file name
// ("<containerID>@<ifname>") and a line in a record, so the container ID
// follows the runtime's rule ([a-zA-Z0-9][a-zA-Z0-9_.-]*, never an '@') and
// the interface name has no '/', whitespace or NUL.
func ValidOwner(o Owner) error {
	if o.ContainerID == "" {
		return errors.New("container ID is empty")
	}
	for i, c := range o.ContainerID {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("_.-", c)) {
			return fmt.Errorf("container ID %q has a character outside [a-zA-Z0-9_.-] or starts with one of _.-", o.ContainerID)
		}
	}
	if o.IfName == "" || o.IfName == "." || o.IfName == ".." || len(o.IfName) > 15 ||
		strings.ContainsAny(o.IfName, "/\x00 \t\r\n") {
		return fmt.Errorf("interface name %q is not a valid interface name", o.IfName)
	}
	return nil
}
