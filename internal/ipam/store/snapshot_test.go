package store

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
)

// TestSnapshot: the lock-free listing sees the records while another
// holder keeps the lock, and nothing of an earlier boot.
func TestSnapshot(t *testing.T) {
	f := fix()
	s := newTestFile(t)
	update(t, s, func(tx Tx) error {
		return errors.Join(tx.Reserve(f.alice, []Claim{{Addr: f.a2}, {Addr: f.v6, Set: 1}}), tx.Reserve(f.bob, []Claim{{Addr: f.a3}}))
	})
	err := s.Update(context.Background(), func(Tx) error {
		got, err := s.Snapshot() // the lock is held: Snapshot must not need it
		if want := []netip.Addr{f.a2, f.a3, f.v6}; err != nil || !slices.Equal(got, want) {
			t.Errorf("Snapshot under the lock = %v, %v; want %v", got, err, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, s.BootIDPath, "boot-2\n")
	if got, err := s.Snapshot(); err != nil || len(got) != 0 {
		t.Errorf("Snapshot after a reboot = %v, %v; want nothing", got, err)
	}
	gone := &File{Dir: filepath.Join(t.TempDir(), "none"), BootIDPath: s.BootIDPath}
	if got, err := gone.Snapshot(); err != nil || got != nil {
		t.Errorf("Snapshot of a store never created = %v, %v", got, err)
	}
}
