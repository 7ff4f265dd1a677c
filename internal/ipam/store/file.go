package store

// The file store: one directory per network, readable with ls and cat (by
// root: see dirs.go for who may write it and why).
//
//	<dataDir>/<network>/
//	  lock                  flock(2) target; serializes every operation
//	  boot_id               kernel boot id when the reservations were made
//	  last_reserved.<set>   round-robin hint per range set (an address)
//	  owners/<cid>@<ifname> an owner's index: its key, then its addresses
//	  10.1.2.3, fd00::5     one record per reserved address: a hard link to
//	                        its owner's index (so `cat` shows the owner first)
//	  .<name>.tmp           a write in progress, or one a crash interrupted
//
// Reserving writes the owner's index (temp file, rename) and then links it
// under each address's name: link(2) fails on an existing name, so a record
// is created only if absent, atomically and with its content already in
// place. Releasing unlinks the records, then the index. Either sequence, cut
// at any instruction, leaves the invariant of the package doc true. Records
// are links rather than copies because creating an inode is by far the
// costliest step here (0.3-0.8 ms on the reference VM, against ~10 µs for a
// link): an ADD creates one inode, whatever the number of range sets.
//
// Durability: a SIGKILLed process leaves only what its completed syscalls
// did, in order, so the ordering above is all crash safety needs. A power cut
// or kernel crash is a reboot, and the first operation after a reboot (new
// kernel boot id) releases every reservation of the network: no network
// namespace survives a reboot. So fsync would protect nothing a reboot does
// not discard anyway, while its latency tails (10-50 ms on the reference VM)
// would dominate an ADD. Only the boot id itself is written durably (after
// the purge it follows), so a reboot is never missed. With reboot detection
// off (BootIDPath empty) or Durable set, every write is fsynced (file, then
// directory) in the same order instead.
//
// The round-robin hint is overwritten in place: losing it to a crash costs
// the rotation order, never correctness.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/cnierr"
)

const (
	// DefaultBootIDPath is where Linux publishes the current boot's id.
	DefaultBootIDPath = "/proc/sys/kernel/random/boot_id"
	// DefaultTimeout bounds the lock wait when the caller's ctx has no
	// deadline; shorter than a runtime's usual CNI timeout.
	DefaultTimeout = 10 * time.Second

	lockName     = "lock"
	bootIDName   = "boot_id"
	ownersDir    = "owners"
	lastResvName = "last_reserved."
	dirMode      = 0o700 // see dirs.go for who may write the store
	fileMode     = 0o600
)

// File is the local, crash-safe store of one network.
type File struct {
	// Dir is <dataDir>/<network>.
	Dir string
	// BootIDPath is read by every operation to detect a reboot; empty
	// disables the check. Tests point it at a file they rewrite.
	BootIDPath string
	// Timeout bounds the lock wait when ctx has no deadline.
	Timeout time.Duration
	// Durable fsyncs every write; see the package's durability notes.
	Durable bool
}

// NewFile opens (creating if needed) the store of network under dataDir,
// after checking that nobody but root (or Pier's own user) can write its
// directories (dirs.go). network must already be validated as a plain name
// (config.LoadIPAM does).
func NewFile(dataDir, network string) (*File, error) {
	if network == "" || network == "." || network == ".." || filepath.Base(network) != network {
		return nil, fmt.Errorf("network name %q cannot name a directory", network)
	}
	dir, err := prepareDirs(dataDir, network)
	if err != nil {
		return nil, err
	}
	return &File{Dir: dir, BootIDPath: DefaultBootIDPath, Timeout: DefaultTimeout}, nil
}

// Update implements Store.
func (s *File) Update(ctx context.Context, fn func(tx Tx) error) error {
	release, err := lockFile(ctx, filepath.Join(s.Dir, lockName), s.timeout())
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return cnierr.Wrap(err, cnierr.TryAgainLater, "IPAM store %s is busy", s.Dir)
		}
		return err
	}
	tx := &fileTx{dir: s.Dir, durable: s.Durable || s.BootIDPath == "", dirty: map[string]bool{}}
	err = s.checkBoot(tx)
	if err == nil {
		err = fn(tx)
	}
	// Even after a failure, make what was done durable before unlocking.
	return errors.Join(err, tx.syncDirs(), release())
}

// View implements Store. It takes the same exclusive lock as Update, because
// the first operation after a reboot must purge, whatever it was asked.
func (s *File) View(ctx context.Context, fn func(tx ReadTx) error) error {
	return s.Update(ctx, func(tx Tx) error { return fn(tx) })
}

// Probe reports whether the store's directories can be used, for STATUS.
func (s *File) Probe() error {
	for _, d := range []string{s.Dir, filepath.Join(s.Dir, ownersDir)} {
		if err := unix.Access(d, unix.R_OK|unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("IPAM store directory %s is not usable: %w", d, err)
		}
	}
	return nil
}

func (s *File) timeout() time.Duration {
	if s.Timeout <= 0 {
		return DefaultTimeout
	}
	return s.Timeout
}

// checkBoot purges the network when the recorded boot id differs from the
// running kernel's. A store without a recorded id just records it: purging
// then could free addresses of live containers, which is worse than a leak.
func (s *File) checkBoot(tx *fileTx) error {
	if s.BootIDPath == "" {
		return nil
	}
	current, err := os.ReadFile(s.BootIDPath)
	if err != nil {
		return fmt.Errorf("read boot id: %w", err)
	}
	current = bytes.TrimSpace(current)
	recorded, err := readRegular(filepath.Join(s.Dir, bootIDName))
	switch {
	case err == nil && bytes.Equal(bytes.TrimSpace(recorded), current):
		return nil
	case err == nil:
		if err := purge(tx); err != nil {
			return fmt.Errorf("release reservations of the previous boot: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("read recorded boot id: %w", err)
	}
	// The purge must be durable before the new id is: a power cut in
	// between then repeats the purge instead of skipping it.
	if err := tx.flushDirs(); err != nil {
		return err
	}
	if err := tx.replaceFile(s.Dir, bootIDName, append(current, '\n'), true); err != nil {
		return err
	}
	return tx.flushDirs()
}

// purge releases everything: records first, then indexes, then leftovers.
func purge(tx Tx) error {
	res, err := tx.Reservations()
	if err != nil {
		return err
	}
	for _, r := range res {
		if err := tx.Discard(r.Addr); err != nil {
			return err
		}
	}
	idx, err := tx.Indexes()
	if err != nil {
		return err
	}
	for _, ix := range idx {
		if err := tx.DropIndex(ix.Owner); err != nil {
			return err
		}
	}
	return tx.Sweep()
}
