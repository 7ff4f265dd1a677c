package store

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/cnierr"
)

// newTestFile opens a store in a temp dir whose boot id the test controls.
func newTestFile(t *testing.T) *File {
	t.Helper()
	s, err := NewFile(t.TempDir(), "net1")
	if err != nil {
		t.Fatal(err)
	}
	s.BootIDPath = filepath.Join(t.TempDir(), "boot_id")
	writeFile(t, s.BootIDPath, "boot-1\n")
	return s
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func update(t *testing.T, s Store, fn func(tx Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

// Fixtures are built per test: the project keeps no package variables.
type fixtures struct {
	alice, bob Owner
	a2, a3, v6 netip.Addr
}

func fix() fixtures {
	return fixtures{
		alice: Owner{ContainerID: "alice", IfName: "eth0"},
		bob:   Owner{ContainerID: "bob", IfName: "net1"},
		a2:    netip.MustParseAddr("10.0.0.2"),
		a3:    netip.MustParseAddr("10.0.0.3"),
		v6:    netip.MustParseAddr("fd00::2"),
	}
}

func TestFileLayout(t *testing.T) {
	f := fix()
	alice, bob, a2, a3, v6 := f.alice, f.bob, f.a2, f.a3, f.v6
	s := newTestFile(t)
	update(t, s, func(tx Tx) error {
		return errors.Join(tx.Reserve(alice, []Claim{{Addr: a2, Set: 0}, {Addr: v6, Set: 1}}),
			tx.Reserve(bob, []Claim{{Addr: a3, Set: 0}}))
	})
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"10.0.0.2", "10.0.0.3", "boot_id", "fd00::2", "last_reserved.0", "last_reserved.1", "lock", "owners"}
	if !slices.Equal(names, want) {
		t.Errorf("ls %s = %v, want %v (and no temp files)", s.Dir, names, want)
	}
	checks := map[string]string{
		"10.0.0.2":          "alice@eth0\n10.0.0.2\nfd00::2\n",
		"fd00::2":           "alice@eth0\n10.0.0.2\nfd00::2\n",
		"10.0.0.3":          "bob@net1\n10.0.0.3\n",
		"owners/alice@eth0": "alice@eth0\n10.0.0.2\nfd00::2\n",
		"owners/bob@net1":   "bob@net1\n10.0.0.3\n",
		"last_reserved.0":   "10.0.0.3\n" + strings.Repeat(" ", 31),
		"last_reserved.1":   "fd00::2\n" + strings.Repeat(" ", 32),
		"boot_id":           "boot-1\n",
	}
	for name, content := range checks {
		if got := readFile(t, filepath.Join(s.Dir, name)); got != content {
			t.Errorf("cat %s = %q, want %q", name, got, content)
		}
	}
	// A record is a link to its owner's index: one inode per ADD.
	var idx, rec syscall.Stat_t
	if syscall.Stat(filepath.Join(s.Dir, "owners/alice@eth0"), &idx) != nil ||
		syscall.Stat(filepath.Join(s.Dir, "fd00::2"), &rec) != nil || idx.Ino != rec.Ino {
		t.Errorf("record fd00::2 (inode %d) is not a link to alice's index (inode %d)", rec.Ino, idx.Ino)
	}
	// A claim on a held address reserves nothing, not even the free ones.
	b4 := netip.MustParseAddr("10.0.0.4")
	update(t, s, func(tx Tx) error {
		if err := tx.Reserve(bob, []Claim{{Addr: b4}, {Addr: a2}}); !errors.Is(err, ErrTaken) {
			t.Errorf("Reserve of a held address: %v, want ErrTaken", err)
		}
		if _, held, _ := tx.Holder(b4); held {
			t.Errorf("a refused Reserve kept its free claim %s", b4)
		}
		return nil
	})
	if got := readFile(t, filepath.Join(s.Dir, "10.0.0.2")); got != checks["10.0.0.2"] {
		t.Errorf("a refused Reserve changed the record to %q", got)
	}
}

// TestFileInterruptedReserve builds the state a crash between Reserve's two
// writes leaves (index written, record not) and checks every reader copes.
func TestFileInterruptedReserve(t *testing.T) {
	f := fix()
	alice, bob, a2, a3, v6 := f.alice, f.bob, f.a2, f.a3, f.v6
	s := newTestFile(t)
	writeFile(t, filepath.Join(s.Dir, ownersDir, "alice@eth0"), "alice@eth0\n10.0.0.2\n10.0.0.3\n")
	writeFile(t, filepath.Join(s.Dir, "10.0.0.3"), "bob@net1\n10.0.0.3\n") // bob's, not alice's
	writeFile(t, filepath.Join(s.Dir, ownersDir, "bob@net1"), "bob@net1\n10.0.0.3\n")
	update(t, s, func(tx Tx) error {
		if _, held, err := tx.Holder(a2); held || err != nil {
			t.Errorf("Holder(%s) = %v, %v; want free", a2, held, err)
		}
		// Releasing alice's listed addresses must leave bob's record.
		if err := errors.Join(tx.Release(a2, alice), tx.Release(a3, alice)); err != nil {
			return err
		}
		if h, held, _ := tx.Holder(a3); !held || h != bob {
			t.Errorf("Release for alice touched bob's %s", a3)
		}
		// A new reservation rewrites alice's index without the stale entries.
		return tx.Reserve(alice, []Claim{{Addr: v6, Set: 1}})
	})
	if got := readFile(t, filepath.Join(s.Dir, ownersDir, "alice@eth0")); got != "alice@eth0\nfd00::2\n" {
		t.Errorf("alice's index = %q, want only fd00::2", got)
	}
}

func TestFileUnreadableRecordAndIndex(t *testing.T) {
	f := fix()
	alice, bob, a2, a3 := f.alice, f.bob, f.a2, f.a3
	s := newTestFile(t)
	writeFile(t, filepath.Join(s.Dir, "10.0.0.7"), "\x00garbage")
	writeFile(t, filepath.Join(s.Dir, ownersDir, "alice@eth0"), "alice@eth0\n10.0.0.2\nnot an address\n")
	writeFile(t, filepath.Join(s.Dir, "10.0.0.2"), "alice@eth0\n")
	writeFile(t, filepath.Join(s.Dir, ownersDir, "bob@net1"), "alice@eth0\n10.0.0.9\n") // names someone else
	update(t, s, func(tx Tx) error {
		_, held, err := tx.Holder(netip.MustParseAddr("10.0.0.7"))
		if !held || !errors.Is(err, ErrCorrupt) {
			t.Errorf("Holder of a garbage record = %v, %v; want held and ErrCorrupt", held, err)
		}
		res, err := tx.Reservations()
		if err != nil || len(res) != 2 || res[1].Err == nil {
			t.Errorf("Reservations = %+v, %v; want 2 with the garbage one flagged", res, err)
		}
		listed, err := tx.Listed(alice)
		if !errors.Is(err, ErrCorrupt) || !slices.Equal(listed, []netip.Addr{a2}) {
			t.Errorf("Listed of a damaged index = %v, %v", listed, err)
		}
		if _, err := tx.Listed(bob); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Listed of an index naming another owner: %v, want ErrCorrupt", err)
		}
		// Reserve rebuilds a damaged index from the records, keeping 10.0.0.2.
		return tx.Reserve(alice, []Claim{{Addr: a3}})
	})
	if got := readFile(t, filepath.Join(s.Dir, ownersDir, "alice@eth0")); got != "alice@eth0\n10.0.0.2\n10.0.0.3\n" {
		t.Errorf("rebuilt index = %q", got)
	}
}

func TestFileReboot(t *testing.T) {
	f := fix()
	alice, bob, a2, v6 := f.alice, f.bob, f.a2, f.v6
	s := newTestFile(t)
	update(t, s, func(tx Tx) error {
		return errors.Join(tx.Reserve(alice, []Claim{{Addr: a2}}), tx.Reserve(bob, []Claim{{Addr: v6, Set: 1}}))
	})
	writeFile(t, filepath.Join(s.Dir, ownersDir, ".x.tmp"), "left by a crash")

	update(t, s, func(Tx) error { return nil }) // same boot: nothing happens
	if _, err := os.Stat(filepath.Join(s.Dir, "10.0.0.2")); err != nil {
		t.Fatalf("reservation gone without a reboot: %v", err)
	}

	writeFile(t, s.BootIDPath, "boot-2\n")
	err := s.View(context.Background(), func(tx ReadTx) error {
		res, err := tx.Reservations()
		idx, ierr := tx.Indexes()
		if len(res) != 0 || len(idx) != 0 {
			t.Errorf("after a reboot: reservations %v, indexes %v", res, idx)
		}
		return errors.Join(err, ierr)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(s.Dir, bootIDName)); got != "boot-2\n" {
		t.Errorf("recorded boot id %q, want boot-2", got)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, ownersDir, ".x.tmp")); !os.IsNotExist(err) {
		t.Errorf("temp file survived the purge: %v", err)
	}
}

func TestFileLockTimeout(t *testing.T) {
	s := newTestFile(t)
	holding, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		done <- s.Update(context.Background(), func(Tx) error {
			close(holding)
			<-release
			return nil
		})
	}()
	<-holding
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Update(ctx, func(Tx) error { t.Error("ran without the lock"); return nil })
	if cnierr.CodeOf(err) != cnierr.TryAgainLater || !strings.Contains(err.Error(), s.Dir) {
		t.Errorf("Update on a locked store: %v, want code 11 naming %s", err, s.Dir)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("gave up after %s, want about the 50ms deadline", waited)
	}
	// A timeout without a ctx deadline comes from File.Timeout.
	s2 := *s
	s2.Timeout = 20 * time.Millisecond
	if err := s2.Update(context.Background(), func(Tx) error { return nil }); cnierr.CodeOf(err) != cnierr.TryAgainLater {
		t.Errorf("Update with File.Timeout on a locked store: %v, want code 11", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The abandoned waiters must not keep the lock once they get it.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := s.Update(ctx2, func(Tx) error { return nil }); err != nil {
		t.Errorf("Update after the holder left: %v", err)
	}
}

func TestFileDropIndexAndSweep(t *testing.T) {
	f := fix()
	alice, a2 := f.alice, f.a2
	s := newTestFile(t)
	writeFile(t, filepath.Join(s.Dir, ".10.0.0.9.tmp"), "alice@eth0\n")
	writeFile(t, filepath.Join(s.Dir, "README"), "an operator's note")
	update(t, s, func(tx Tx) error {
		if err := tx.Reserve(alice, []Claim{{Addr: a2}}); err != nil {
			return err
		}
		return errors.Join(tx.Release(a2, alice), tx.DropIndex(alice), tx.Sweep())
	})
	entries, _ := os.ReadDir(s.Dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"README", "boot_id", "last_reserved.0", "lock", "owners"}; !slices.Equal(names, want) {
		t.Errorf("ls = %v, want %v", names, want)
	}
	if owners, _ := os.ReadDir(filepath.Join(s.Dir, ownersDir)); len(owners) != 0 {
		t.Errorf("owners/ still holds %v", owners)
	}
}

func TestNewFileRefusesPaths(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "../x"} {
		if _, err := NewFile(t.TempDir(), name); err == nil {
			t.Errorf("NewFile accepted network %q", name)
		}
	}
}

func TestValidOwner(t *testing.T) {
	good := [][2]string{{"a", "eth0"}, {"A1_b.c-d", "net1"}, {"x", "if@x"}}
	bad := [][2]string{{"", "eth0"}, {"a", ""}, {"_a", "eth0"}, {"a@b", "eth0"}, {"a/b", "eth0"},
		{"a", "."}, {"a", ".."}, {"a", "a/b"}, {"a", "eth 0"}, {"a", "sixteen-chars-xx"}}
	for _, p := range good {
		if err := ValidOwner(Owner{ContainerID: p[0], IfName: p[1]}); err != nil {
			t.Errorf("ValidOwner(%q) = %v", p, err)
		}
	}
	for _, p := range bad {
		if ValidOwner(Owner{ContainerID: p[0], IfName: p[1]}) == nil {
			t.Errorf("ValidOwner(%q) accepted it", p)
		}
	}
}

// TestFileDurable runs the fsync path: the same steps, same results. Without
// reboot detection a store must be durable, whatever Durable says.
func TestFileDurable(t *testing.T) {
	f := fix()
	alice, a2, v6 := f.alice, f.a2, f.v6
	explicit, forced := newTestFile(t), newTestFile(t)
	explicit.Durable = true
	forced.BootIDPath = ""
	for _, s := range []*File{explicit, forced} {
		update(t, s, func(tx Tx) error {
			if !tx.(*fileTx).durable {
				t.Errorf("store %+v is not durable", s)
			}
			if err := tx.Reserve(alice, []Claim{{Addr: a2}, {Addr: v6, Set: 1}}); err != nil {
				return err
			}
			return errors.Join(tx.Release(a2, alice), tx.Release(v6, alice), tx.DropIndex(alice))
		})
		update(t, s, func(tx Tx) error {
			res, err := tx.Reservations()
			idx, ierr := tx.Indexes()
			if len(res) != 0 || len(idx) != 0 {
				t.Errorf("left %v and %v", res, idx)
			}
			return errors.Join(err, ierr)
		})
	}
}
