package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// queueFile is the release queue's file under pierd's data dir.
const queueFile = "cluster-del-queue.json"

// queued is one release waiting for etcd: the allocation at Addr with
// identity ID, of owner Alloc. An entry without an address names every
// allocation its owner holds when the node's blocks are first read: a
// release queued before this pierd had read them (or written by a pierd
// that queued owners only). The first read resolves such entries into
// exact ones before any allocation is made, so they too can only name
// allocations older than the release.
type queued struct {
	Alloc
	Addr netip.Addr `json:"addr,omitzero"`
	ID   string     `json:"id,omitempty"`
}

// releaseQueue is the DEL queue: releases answered while etcd was
// unreachable, kept in memory and on disk until a committed transaction
// has applied them. Only a successful drain removes an entry (or finding
// its allocation already gone): no other call may drop one.
type releaseQueue struct {
	path   string
	exact  map[netip.Addr]queued // by address: one allocation per address
	owners []Alloc               // entries without an address
	// unsaved: the file is behind memory (its last write failed).
	unsaved bool
}

// openQueue reads the queue at path; a missing file is an empty queue.
func openQueue(path string) (*releaseQueue, error) {
	q := &releaseQueue{path: path, exact: map[netip.Addr]queued{}}
	b, err := readNoFollow(path)
	if errors.Is(err, os.ErrNotExist) {
		return q, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the release queue: %w", err)
	}
	var list []queued
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("release queue %s: %w", path, err)
	}
	for _, e := range list {
		q.put(e)
	}
	return q, nil
}

func (q *releaseQueue) put(e queued) {
	if e.Addr.IsValid() {
		q.exact[e.Addr] = e
	} else if !slices.Contains(q.owners, e.Alloc) {
		q.owners = append(q.owners, e.Alloc)
	}
}

func (q *releaseQueue) empty() bool { return len(q.exact) == 0 && len(q.owners) == 0 }

// holds reports whether the allocation a at addr waits for its release.
func (q *releaseQueue) holds(addr netip.Addr, a Allocation) bool {
	e, ok := q.exact[addr]
	return ok && e.Alloc == a.Alloc && e.ID == a.ID
}

// add queues entries and writes the queue; the error says the file could
// not be written (the entries stay queued in memory).
func (q *releaseQueue) add(entries ...queued) error {
	for _, e := range entries {
		q.put(e)
	}
	return q.save()
}

// remove forgets the entries at addrs (applied or found gone) and writes
// the queue.
func (q *releaseQueue) remove(addrs []netip.Addr) error {
	for _, a := range addrs {
		delete(q.exact, a)
	}
	return q.save()
}

// resolve replaces the owner-only entries by exact ones, from held (every
// allocation of the node by owner and address), and writes the queue.
func (q *releaseQueue) resolve(held map[Alloc]map[netip.Addr]Allocation) error {
	if len(q.owners) == 0 {
		return nil
	}
	for _, o := range q.owners {
		for addr, a := range held[o] {
			q.exact[addr] = queued{Alloc: o, Addr: addr, ID: a.ID}
		}
	}
	q.owners = nil
	return q.save()
}

// save writes the queue: a temp file, fsynced, renamed over the queue,
// and the directory fsynced. A lost queue entry leaks an address until a
// GC, so unlike the IPAM store the queue is written durably; it is
// written only while etcd is unreachable, which is rare.
func (q *releaseQueue) save() error {
	list := make([]queued, 0, len(q.exact)+len(q.owners))
	for _, o := range q.owners {
		list = append(list, queued{Alloc: o})
	}
	for _, e := range q.exact {
		list = append(list, e)
	}
	slices.SortFunc(list, func(x, y queued) int { return x.Addr.Compare(y.Addr) })
	b, err := json.Marshal(list)
	if err == nil {
		err = writeDurably(q.path, b)
	}
	q.unsaved = err != nil
	if err != nil {
		return fmt.Errorf("write the release queue %s: %w", q.path, err)
	}
	return nil
}

// writeDurably replaces path with b. The temp file is created afresh
// (O_EXCL, O_NOFOLLOW), so nothing planted at its name is written through,
// as the IPAM store does.
func writeDurably(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort: the next save truncates it anyway
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close() //nolint:errcheck // read-only directory handle
	return d.Sync()
}

// readNoFollow reads the file at path, refusing a symlink there.
func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // read-only
	return io.ReadAll(f)
}
