package store

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// Snapshot returns the addresses reserved in the store as its directory
// shows them at this instant, without taking the lock: for reports such as
// metrics, which must never make an ADD wait, and never for deciding
// anything. A reservation being made or released meanwhile may or may not
// be counted; an unreadable record counts (its address is held). After a
// reboot nothing is reserved, even before the first locked operation has
// purged the records of the previous boot. A store that does not exist
// holds nothing.
func (s *File) Snapshot() ([]netip.Addr, error) {
	if s.BootIDPath != "" {
		current, err := os.ReadFile(s.BootIDPath)
		if err != nil {
			return nil, fmt.Errorf("read boot id: %w", err)
		}
		recorded, err := readRegular(filepath.Join(s.Dir, bootIDName))
		if err == nil && !bytes.Equal(bytes.TrimSpace(recorded), bytes.TrimSpace(current)) {
			return nil, nil
		}
	}
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list reservations: %w", err)
	}
	var addrs []netip.Addr
	for _, e := range entries {
		if a, ok := recordAddr(e.Name()); ok {
			addrs = append(addrs, a)
		}
	}
	return addrs, nil
}
