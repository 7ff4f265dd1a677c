package nodelock

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestAcquire: the lock's directory is made where missing, the file is
// root's 0600, and a second taker waits for the first (flock(2) locks
// belong to open files, so one process can show it).
func TestAcquire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "pier", "node.lock")
	release, err := Acquire(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v", st, err)
	}
	got := make(chan func())
	go func() {
		r, err := Acquire(path)
		if err != nil {
			t.Error(err)
			r = func() {}
		}
		got <- r
	}()
	var second func()
	waits, err := testnet.WaitForLockWaiter(path, func() bool {
		select {
		case second = <-got:
			return true
		default:
			return false
		}
	})
	if err != nil || !waits {
		if second != nil {
			second()
		}
		t.Fatalf("a second Acquire took the lock while the first held it (%v)", err)
	}
	release()
	(<-got)()
}

// TestAcquireRefuses: the node lock is never taken through a symlink, nor
// in a directory another user owns or may write, nor from a relative or
// empty path (a caller that forgot to set it).
func TestAcquireRefuses(t *testing.T) {
	cases := []struct {
		name    string
		prepare func(t *testing.T, dir string) string
		want    string
	}{
		{"empty path", func(*testing.T, string) string { return "" }, "not an absolute path"},
		{"relative path", func(*testing.T, string) string { return "run/node.lock" }, "not an absolute path"},
		{"symlink at the lock's name", func(t *testing.T, dir string) string {
			target := filepath.Join(dir, "target")
			mustWrite(t, target)
			link := filepath.Join(dir, "node.lock")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, "open node lock"},
		{"symlinked directory", func(t *testing.T, dir string) string {
			if err := os.Symlink(mkdir(t, filepath.Join(dir, "elsewhere"), 0o755), filepath.Join(dir, "pier")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, "pier", "node.lock")
		}, "symbolic link"},
		{"world-writable directory", func(t *testing.T, dir string) string {
			return filepath.Join(mkdir(t, filepath.Join(dir, "pier"), 0o777), "node.lock")
		}, "chmod go-w"},
		{"sticky world-writable directory", func(t *testing.T, dir string) string {
			return filepath.Join(mkdir(t, filepath.Join(dir, "pier"), 0o777|os.ModeSticky), "node.lock")
		}, "chmod go-w"},
		{"world-writable parent", func(t *testing.T, dir string) string {
			return filepath.Join(mkdir(t, filepath.Join(mkdir(t, filepath.Join(dir, "run"), 0o777), "pier"), 0o755), "node.lock")
		}, "chmod go-w"},
		{"directory of another user", func(t *testing.T, dir string) string {
			d := mkdir(t, filepath.Join(dir, "pier"), 0o755)
			chown(t, d)
			return filepath.Join(d, "node.lock")
		}, "owned by uid 65534"},
		{"lock file of another user", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "node.lock")
			mustWrite(t, p)
			chown(t, p)
			return p
		}, "not owned by root"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.prepare(t, t.TempDir())
			release, err := Acquire(path)
			if err == nil {
				release()
				t.Fatalf("Acquire(%q) took the lock", path)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Acquire(%q): %v, want %q", path, err, tc.want)
			}
		})
	}
	// A sticky directory above the lock's own (like /tmp) is fine.
	sticky := mkdir(t, filepath.Join(t.TempDir(), "tmp"), 0o777|os.ModeSticky)
	release, err := Acquire(filepath.Join(sticky, "pier", "node.lock"))
	if err != nil {
		t.Fatalf("below a sticky directory: %v", err)
	}
	release()
}

func mkdir(t *testing.T, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustWrite(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file away")
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}
