// Package migrate imports the reservations of the reference host-local IPAM
// plugin into Pier's store, so a node switched from host-local to pier-ipam
// never hands out an address a running container already has.
//
// host-local keeps, per network, one file per reserved address under
// <dataDir>/<network>/ (default dataDir /var/lib/cni/networks) holding
// "<containerID>\r\n<ifname>" (before v0.8 only the container ID), plus
// last_reserved_ip.<range set> and a lock file; it serializes with an
// exclusive flock on the network's directory. Migration reads that
// directory under a shared flock, so a host-local call in flight finishes
// first and none starts while it reads, and writes through Pier's own store
// (store.File.Update, Tx.Reserve), so Pier's lock, ordering and format apply
// exactly as for an ADD.
package migrate

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultHostLocalDir is host-local's default dataDir.
const DefaultHostLocalDir = "/var/lib/cni/networks"

// lastReservedPrefix names host-local's round-robin hints.
const lastReservedPrefix = "last_reserved_ip."

// HostLocalEntry is one reservation file of host-local.
type HostLocalEntry struct {
	Addr        netip.Addr
	ContainerID string
	IfName      string // empty in the pre-v0.8 format
	File        string
}

// HostLocal is what host-local keeps for one network.
type HostLocal struct {
	Dir     string
	Entries []HostLocalEntry
	// LastReserved is host-local's round-robin position per range set.
	LastReserved map[int]netip.Addr
	// Unreadable lists files that look like reservations but cannot be
	// parsed; their addresses are not imported.
	Unreadable []string
}

// ReadHostLocal reads host-local's state of network under dataDir, holding
// a shared flock on the network's directory while it reads.
func ReadHostLocal(dataDir, network string) (*HostLocal, error) {
	dir := filepath.Join(dataDir, network)
	unlock, err := lockShared(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read host-local state: %w", err)
	}
	hl := &HostLocal{Dir: dir, LastReserved: map[int]netip.Addr{}}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if set, ok := strings.CutPrefix(name, lastReservedPrefix); ok {
			hl.readHint(path, set)
			continue
		}
		addr, err := netip.ParseAddr(name)
		if err != nil || e.IsDir() {
			continue // lock, or something host-local does not write
		}
		entry, err := readEntry(path, addr.Unmap())
		if err != nil {
			hl.Unreadable = append(hl.Unreadable, fmt.Sprintf("%s: %v", path, err))
			continue
		}
		hl.Entries = append(hl.Entries, entry)
	}
	sort.Slice(hl.Entries, func(i, j int) bool { return hl.Entries[i].Addr.Less(hl.Entries[j].Addr) })
	return hl, nil
}

func (hl *HostLocal) readHint(path, set string) {
	n, err := strconv.Atoi(set)
	if err != nil {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return // a hint only orders the rotation; losing it costs nothing else
	}
	if a, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil {
		hl.LastReserved[n] = a.Unmap()
	}
}

func readEntry(path string, addr netip.Addr) (HostLocalEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return HostLocalEntry{}, err
	}
	content := strings.TrimSpace(string(b))
	id, ifName, _ := strings.Cut(content, "\r\n")
	if !strings.Contains(content, "\r\n") {
		id, ifName, _ = strings.Cut(content, "\n")
	}
	id, ifName = strings.TrimSpace(id), strings.TrimSpace(ifName)
	if id == "" {
		return HostLocalEntry{}, errors.New("no container ID in the file")
	}
	return HostLocalEntry{Addr: addr, ContainerID: id, IfName: ifName, File: path}, nil
}

// lockWait bounds the wait for host-local's lock; host-local holds it for
// milliseconds per call, so a longer wait means a stuck process.
const lockWait = 10 * time.Second

// lockShared takes a shared flock on dir, the directory host-local locks
// exclusively, and returns its release. It polls with a non-blocking flock
// (every 20 ms, a fraction of a host-local call) up to lockWait, so a stuck
// host-local makes migrate fail instead of hang.
func lockShared(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open host-local state: %w", err)
	}
	deadline := time.Now().Add(lockWait)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close() //nolint:errcheck // read-only
		return nil, fmt.Errorf("lock host-local state %s: %w", dir, err)
	}
	return func() { f.Close() }, nil //nolint:errcheck // closing releases the lock; read-only
}
