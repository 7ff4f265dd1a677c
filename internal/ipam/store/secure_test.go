package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestLinksInStoreNotFollowed guards against a root plugin writing through
// a link planted in its store: symlinks at a record's, the hint's and the
// temp files' names, and a hard link at the hint's name, all pointing at a
// file outside the store that must come through unchanged.
func TestLinksInStoreNotFollowed(t *testing.T) {
	f := fix()
	dataDir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	const content = "precious\n"
	writeFile(t, victim, content)
	dir := filepath.Join(dataDir, "net1")
	if err := os.MkdirAll(filepath.Join(dir, ownersDir), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"10.0.0.5",                           // a record: read by every scan
		"last_reserved.0",                    // the hint, written in place
		"." + bootIDName + ".tmp",            // the boot id's temp file
		ownersDir + "/.alice@eth0.tmp",       // an index's temp file
		ownersDir + "/.bob@net1.tmp",         // another
		"last_reserved.1",                    // replaced by a hard link below
		"10.0.0.6",                           // a dangling link: still not created through
		ownersDir + "/.carol@eth0.tmp.other", // not a name Pier uses: left alone
	} {
		if err := os.Symlink(victim, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "last_reserved.1")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(victim, filepath.Join(dir, "last_reserved.1")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "10.0.0.6")); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(t.TempDir(), "created")
	if err := os.Symlink(dangling, filepath.Join(dir, "10.0.0.6")); err != nil {
		t.Fatal(err)
	}

	s, err := NewFile(dataDir, "net1")
	if err != nil {
		t.Fatal(err)
	}
	s.BootIDPath = filepath.Join(t.TempDir(), "boot_id")
	writeFile(t, s.BootIDPath, "boot-1\n")
	update(t, s, func(tx Tx) error {
		for _, a := range []string{"10.0.0.5", "10.0.0.6"} {
			if _, held, err := tx.Holder(mustAddr(a)); !held || !errors.Is(err, errNotRegular) {
				t.Errorf("Holder of a symlinked record %s = %v, %v; want held, not a regular file", a, held, err)
			}
		}
		return errors.Join(
			tx.Reserve(f.alice, []Claim{{Addr: f.a2, Set: 0}, {Addr: f.v6, Set: 1}}),
			tx.Reserve(f.bob, []Claim{{Addr: f.a3, Set: 0}}),
			tx.Discard(mustAddr("10.0.0.5")), // GC's way with unreadable records
		)
	})
	if got := readFile(t, victim); got != content {
		t.Fatalf("the file behind the planted links now reads %q", got)
	}
	if _, err := os.Lstat(dangling); err == nil {
		t.Error("a file was created through a dangling symlink")
	}
	for name, want := range map[string]string{
		"last_reserved.0": "10.0.0.3\n", "last_reserved.1": "fd00::2\n", bootIDName: "boot-1\n",
		ownersDir + "/alice@eth0": "alice@eth0\n10.0.0.2\nfd00::2\n",
	} {
		fi, err := os.Lstat(filepath.Join(s.Dir, name))
		if err != nil || !fi.Mode().IsRegular() || !strings.HasPrefix(readFile(t, filepath.Join(s.Dir, name)), want) {
			t.Errorf("%s: %v, %v; want Pier's own regular file starting %q", name, fi, err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(s.Dir, "10.0.0.5")); !os.IsNotExist(err) {
		t.Errorf("Discard left the symlinked record: %v", err)
	}

	// A symlink at the lock's name stops every operation, naming it.
	lock := filepath.Join(s.Dir, lockName)
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, lock); err != nil {
		t.Fatal(err)
	}
	err = s.Update(context.Background(), func(Tx) error { return nil })
	if !errors.Is(err, errNotRegular) || !strings.Contains(err.Error(), lock) {
		t.Errorf("Update with a symlinked lock file: %v", err)
	}
}

// TestDataDirRefused guards against a store in a directory others can
// write (they could plant the links above): the error names the directory
// and the fix.
func TestDataDirRefused(t *testing.T) {
	cases := []struct {
		name    string
		prepare func(t *testing.T, parent string) (dataDir string)
		want    string
	}{
		{"world-writable data dir", func(t *testing.T, parent string) string {
			return mkdir(t, filepath.Join(parent, "data"), 0o777)
		}, "chmod go-w"},
		{"group-writable data dir", func(t *testing.T, parent string) string {
			return mkdir(t, filepath.Join(parent, "data"), 0o770)
		}, "chmod go-w"},
		{"sticky world-writable data dir", func(t *testing.T, parent string) string {
			return mkdir(t, filepath.Join(parent, "data"), 0o777|os.ModeSticky)
		}, "chmod go-w"},
		{"world-writable network dir", func(t *testing.T, parent string) string {
			d := mkdir(t, filepath.Join(parent, "data"), 0o755)
			mkdir(t, filepath.Join(d, "net1"), 0o777)
			return d
		}, filepath.Join("data", "net1") + " is writable by group or others"},
		{"symlinked network dir", func(t *testing.T, parent string) string {
			d := mkdir(t, filepath.Join(parent, "data"), 0o755)
			if err := os.Symlink(mkdir(t, filepath.Join(parent, "elsewhere"), 0o700), filepath.Join(d, "net1")); err != nil {
				t.Fatal(err)
			}
			return d
		}, "symbolic link"},
		{"world-writable parent without sticky bit", func(t *testing.T, parent string) string {
			p := mkdir(t, filepath.Join(parent, "shared"), 0o777)
			return mkdir(t, filepath.Join(p, "data"), 0o700)
		}, "not sticky"},
		{"data dir owned by another user", func(t *testing.T, parent string) string {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a directory away")
			}
			d := mkdir(t, filepath.Join(parent, "data"), 0o755)
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return d
		}, "chown 0 "},
		// A parent's owner may chmod it and rename the data directory
		// away: one not root's is refused whatever its mode, sticky too.
		{"parent owned by another user", func(t *testing.T, parent string) string {
			return mkdir(t, filepath.Join(giveAway(t, mkdir(t, filepath.Join(parent, "theirs"), 0o755)), "data"), 0o700)
		}, "owned by uid 65534"},
		{"sticky world-writable parent owned by another user", func(t *testing.T, parent string) string {
			return mkdir(t, filepath.Join(giveAway(t, mkdir(t, filepath.Join(parent, "tmp"), 0o777|os.ModeSticky)), "data"), 0o700)
		}, "owned by uid 65534"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := tc.prepare(t, t.TempDir())
			_, err := NewFile(dataDir, "net1")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dataDir) {
				t.Fatalf("NewFile over %s: %v; want a refusal naming it and %q", dataDir, err, tc.want)
			}
		})
	}

	// What is fine: a sticky world-writable parent (like /tmp), a data dir
	// reached through a symlink, a 0755 data dir made by someone else.
	parent := mkdir(t, filepath.Join(t.TempDir(), "tmp"), 0o777|os.ModeSticky)
	real := mkdir(t, filepath.Join(parent, "real"), 0o755)
	link := filepath.Join(parent, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	s, err := NewFile(link, "net1")
	if err != nil {
		t.Fatalf("NewFile under a sticky parent, through a symlink: %v", err)
	}
	if s.Dir != filepath.Join(real, "net1") {
		t.Errorf("store dir %s, want the resolved %s", s.Dir, filepath.Join(real, "net1"))
	}
	// A data dir still to be made below a symlink is made where it points.
	if s, err = NewFile(filepath.Join(link, "new", "data"), "net1"); err != nil || s.Dir != filepath.Join(real, "new", "data", "net1") {
		t.Errorf("NewFile of a new data dir below a symlink: %+v, %v", s, err)
	}
	// A dangling link on the way is an error naming the data dir.
	dangling := filepath.Join(parent, "dangling")
	if err := os.Symlink(filepath.Join(parent, "nowhere"), dangling); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFile(filepath.Join(dangling, "data"), "net1"); err == nil || !strings.Contains(err.Error(), dangling) {
		t.Errorf("NewFile below a dangling link: %v", err)
	}
}

// TestFileModes: what Pier creates is root's alone (files 0600, its
// directories 0700); root still reads it all with ls and cat.
func TestFileModes(t *testing.T) {
	f := fix()
	dataDir := filepath.Join(t.TempDir(), "a", "data")
	s, err := NewFile(dataDir, "net1")
	if err != nil {
		t.Fatal(err)
	}
	s.BootIDPath = filepath.Join(t.TempDir(), "boot_id")
	writeFile(t, s.BootIDPath, "boot-1\n")
	update(t, s, func(tx Tx) error { return tx.Reserve(f.alice, []Claim{{Addr: f.a2}}) })
	want := map[string]os.FileMode{
		dataDir: 0o700, s.Dir: 0o700, filepath.Join(s.Dir, ownersDir): 0o700,
		filepath.Join(s.Dir, "10.0.0.2"): 0o600, filepath.Join(s.Dir, lockName): 0o600,
		filepath.Join(s.Dir, bootIDName): 0o600, filepath.Join(s.Dir, "last_reserved.0"): 0o600,
		filepath.Join(s.Dir, ownersDir, "alice@eth0"): 0o600,
	}
	for path, mode := range want {
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %04o", path, fi.Mode().Perm(), err, mode)
		}
	}
}

// giveAway makes uid 65534 the owner of dir (as root only).
func giveAway(t *testing.T, dir string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory away")
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mkdir(t *testing.T, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// BenchmarkNewFile: what opening a store costs each plugin call, with the
// checks of its directories (go test -run '^$' -bench NewFile).
func BenchmarkNewFile(b *testing.B) {
	dataDir := filepath.Join(b.TempDir(), "var", "lib", "cni", "pier")
	for range b.N {
		if _, err := NewFile(dataDir, "net1"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAncestorOfPiersOwnUser: a parent owned by the user Pier runs as is
// fine (that user is who writes the store anyway), root's sticky /tmp
// too: uid 65534 opens a store under its own directory in /tmp. Before
// the owner check, such a parent of anyone's passed; now only Pier's
// own user's and root's do.
func TestAncestorOfPiersOwnUser(t *testing.T) {
	if dir := os.Getenv("PIER_STORE_CHILD_DATADIR"); dir != "" {
		if _, err := NewFile(dir, "net1"); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	// Not t.TempDir: its directory is root's 0700, which uid 65534 cannot
	// enter. /tmp itself is root's and sticky.
	top, err := os.MkdirTemp("", "pier-store-owner-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(top) })
	parent := giveAway(t, mkdir(t, filepath.Join(mkdir(t, top, 0o755), "mine"), 0o755))
	// The test binary lies in the go tool's 0700 directory: a copy the
	// child may run.
	bin, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(filepath.Join(top, "store.test"), bin, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(top, "store.test"), "-test.run=^TestAncestorOfPiersOwnUser$")
	cmd.Env = append(os.Environ(), "PIER_STORE_CHILD_DATADIR="+filepath.Join(parent, "data"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("uid 65534 opening a store below its own directory: %v\n%s", err, out)
	}
	if _, err := NewFile(filepath.Join(parent, "data"), "net1"); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("root opening the same store below uid 65534's directory: %v, want a refusal", err)
	}
}
