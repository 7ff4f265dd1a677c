package store

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// fileTx is the File store's transaction: valid only inside Update, while the
// lock is held, which is why it can name its temp files deterministically.
type fileTx struct {
	dir     string
	durable bool // fsync every write (see the package's durability notes)
	// dirty holds directories whose entries changed since their last fsync.
	// Directory fsyncs are batched up to the next ordering point (syncDirs)
	// instead of one per file.
	dirty map[string]bool
}

var _ Tx = (*fileTx)(nil)

func (t *fileTx) addrPath(a netip.Addr) string { return filepath.Join(t.dir, a.String()) }

func (t *fileTx) ownersPath() string { return filepath.Join(t.dir, ownersDir) }

func (t *fileTx) Holder(addr netip.Addr) (Owner, bool, error) {
	b, err := readRegular(t.addrPath(addr))
	if errors.Is(err, os.ErrNotExist) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, true, fmt.Errorf("read record of %s: %w", addr, err)
	}
	o, err := parseRecord(b)
	if err != nil {
		return Owner{}, true, fmt.Errorf("record of %s: %w", addr, err)
	}
	return o, true, nil
}

func (t *fileTx) Listed(o Owner) ([]netip.Addr, error) {
	if err := ValidOwner(o); err != nil {
		return nil, err
	}
	b, err := readRegular(filepath.Join(t.ownersPath(), ownerKey(o)))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read index of %s: %w", o, err)
	}
	named, addrs, err := parseIndex(b)
	if err == nil && named != o {
		err = fmt.Errorf("%w: it names %s", ErrCorrupt, named)
	}
	if err != nil {
		return addrs, fmt.Errorf("index of %s: %w", o, err)
	}
	return addrs, nil
}

func (t *fileTx) LastReserved(set int) netip.Addr {
	b, err := readRegular(filepath.Join(t.dir, lastResvName+strconv.Itoa(set)))
	if err != nil {
		return netip.Addr{} // no hint yet, or a lost one: rotation restarts
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.Addr{} // as above; the hint is never authoritative
	}
	return a
}

func (t *fileTx) Reservations() ([]Reservation, error) {
	entries, err := os.ReadDir(t.dir)
	if err != nil {
		return nil, fmt.Errorf("list reservations: %w", err)
	}
	var res []Reservation
	for _, e := range entries {
		a, ok := recordAddr(e.Name())
		if !ok {
			continue // lock, boot_id, hints, owners/, temp files: not records
		}
		o, _, err := t.Holder(a)
		res = append(res, Reservation{Addr: a, Owner: o, Err: err})
	}
	return res, nil
}

// recordAddr returns the address a file name records, if it is one: the
// address in canonical form.
func recordAddr(name string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(name)
	return a, err == nil && a.String() == name
}

func (t *fileTx) Indexes() ([]Index, error) {
	entries, err := os.ReadDir(t.ownersPath())
	if err != nil {
		return nil, fmt.Errorf("list owner indexes: %w", err)
	}
	var idx []Index
	for _, e := range entries {
		o, err := parseOwnerKey(e.Name())
		if err != nil {
			continue // temp files, or a file an operator left: not ours to judge
		}
		addrs, err := t.Listed(o)
		idx = append(idx, Index{Owner: o, Addrs: addrs, Err: err})
	}
	return idx, nil
}

// Reserve writes o's index, listing every claim, before linking it under
// each claimed address, so a crash between the two leaves index entries
// without records, which every reader tolerates, and never a record its
// owner's index does not list.
func (t *fileTx) Reserve(o Owner, claims []Claim) error {
	if err := ValidOwner(o); err != nil {
		return err
	}
	index, err := t.verifiedIndex(o)
	if err != nil {
		return err
	}
	for _, c := range claims {
		if !slices.Contains(index, c.Addr) {
			index = append(index, c.Addr)
		}
	}
	if err := t.replaceFile(t.ownersPath(), ownerKey(o), formatIndex(o, index), false); err != nil {
		return err
	}
	if err := t.syncDirs(); err != nil { // ordering point: index before records
		return err
	}
	src := filepath.Join(t.ownersPath(), ownerKey(o))
	for i, c := range claims {
		if err := t.link(src, t.dir, c.Addr.String()); err != nil {
			errs := []error{err}
			for _, done := range claims[:i] { // all or nothing
				errs = append(errs, t.remove(t.dir, done.Addr.String()))
			}
			return errors.Join(errs...)
		}
	}
	for _, c := range claims {
		hint := filepath.Join(t.dir, lastResvName+strconv.Itoa(c.Set))
		_ = writeHint(hint, c.Addr.String()) // advisory: a lost hint only restarts the rotation
	}
	return nil
}

// verifiedIndex returns o's index without entries whose record provably
// belongs to nobody or someone else (leftovers of interrupted reservations).
// An unreadable index is rebuilt from a scan of the records, so rewriting it
// cannot drop an address o holds.
func (t *fileTx) verifiedIndex(o Owner) ([]netip.Addr, error) {
	listed, err := t.Listed(o)
	if err != nil {
		return t.scanOwned(o)
	}
	keep := listed[:0]
	for _, a := range listed {
		h, held, err := t.Holder(a)
		if err != nil || held && h == o {
			keep = append(keep, a) // unreadable: it might be o's, keep it listed
		}
	}
	return keep, nil
}

func (t *fileTx) scanOwned(o Owner) ([]netip.Addr, error) {
	res, err := t.Reservations()
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for _, r := range res {
		if r.Err == nil && r.Owner == o {
			addrs = append(addrs, r.Addr)
		}
	}
	return addrs, nil
}

func (t *fileTx) Release(addr netip.Addr, o Owner) error {
	h, held, err := t.Holder(addr)
	if err != nil || !held || h != o {
		return nil // not provably o's record: leave it
	}
	return t.remove(t.dir, addr.String())
}

func (t *fileTx) Discard(addr netip.Addr) error { return t.remove(t.dir, addr.String()) }

// DropIndex makes the removal of o's records durable before removing the
// index, the mirror image of Reserve's order. It also removes o's temporary
// index, which an ADD killed while writing it leaves behind: the name is
// o's alone, and the lock is held, so no write of it is in progress. Without
// this, nodes whose runtime never sends GC would collect such files.
func (t *fileTx) DropIndex(o Owner) error {
	if err := ValidOwner(o); err != nil {
		return err
	}
	if err := t.syncDirs(); err != nil {
		return err
	}
	key := ownerKey(o)
	return errors.Join(t.remove(t.ownersPath(), key), t.remove(t.ownersPath(), "."+key+".tmp"))
}

func (t *fileTx) Sweep() error {
	var errs []error
	for _, dir := range []string{t.dir, t.ownersPath()} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep: %w", err))
			continue
		}
		for _, e := range entries {
			if name := e.Name(); strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp") {
				errs = append(errs, t.remove(dir, name))
			}
		}
	}
	return errors.Join(errs...)
}
