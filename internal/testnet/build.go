package testnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// # Design notes: one build of the binaries per state of the sources
//
// The end-to-end tests exec the real binaries, so a test process needs
// them built, about 130 MB for the four. A temporary directory per test
// process, left for an OS temp cleaner, piles up: several test binaries
// of one `go test ./...` need them, every run builds them again, and the
// cleaner need not run at all (hundreds of directories and tens of GB were
// found on one machine). So the build lives in os.TempDir() under a name
// that is a hash of what goes into it (the module's sources, go.mod and
// go.sum, the Go version and build settings): every test process of a
// run, and every later run while the sources stay the same, uses the one
// build. Nothing outlives what uses it for long:
//
//   - pier-bin-<hash>.lock, beside the directory, is locked (flock,
//     shared) by every process using the build for as long as it lives
//     (the kernel drops the lock when the process ends, however it ends);
//     pier-bin-<hash>.build, locked exclusively, makes the first users of
//     a state wait for one build instead of each making their own;
//   - once it holds its build, a process removes every other build whose
//     lock nobody holds, directory and lock file, so what is left besides
//     the builds in use is at most what processes that have all ended
//     built since the last test process started.
//
// A lock file removed while another process waits on it would leave that
// process holding a lock on a file no one else sees: so after taking the
// lock a process checks that the path still names the file it locked, and
// starts over when not. A build cut short has no .complete marker and is
// built again by the next process; so is a directory of the build's name
// that another user made (see complete).

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	// heldBuild is the open, shared-locked lock file of the build in use.
	heldBuild *os.File
)

const buildPrefix = "pier-bin-"

// Binaries returns the directory holding pier, pier-ipam, pierd and
// pierctl built from this module's sources (./cmd/...), building them when
// no test process has built these sources yet (see the design notes).
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { buildDir, buildErr = sharedBuild() })
	if buildErr != nil {
		t.Fatalf("building binaries: %v", buildErr)
	}
	return buildDir
}

// sharedBuild finds or makes the build of the module's current sources
// and keeps it locked (shared) until the process ends.
func sharedBuild() (string, error) {
	modDir, env, err := goEnv()
	if err != nil {
		return "", err
	}
	key, err := sourceKey(modDir, env)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(os.TempDir(), buildPrefix+key)
	for {
		lock, err := lockBuild(dir, func(dir string) error { return build(dir, modDir) })
		if err != nil {
			return "", err
		}
		if lock == nil {
			continue // the build was removed while we waited: start over
		}
		// The shared lock is held until the process exits: the file stays
		// open on purpose.
		heldBuild = lock
		evictOthers(dir)
		return dir, nil
	}
}

// goEnv returns the module's directory and the Go settings that change
// what a build produces.
func goEnv() (string, string, error) {
	out, err := exec.Command("go", "env", "GOMOD", "GOVERSION", "GOOS", "GOARCH", "GOAMD64", "GOFLAGS", "GOEXPERIMENT").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env: %w", err)
	}
	gomod, _, _ := strings.Cut(string(out), "\n")
	if strings.TrimSpace(gomod) == "" {
		return "", "", errors.New("go env GOMOD: not in a module")
	}
	return filepath.Dir(strings.TrimSpace(gomod)), string(out), nil
}

// sourceKey hashes env and every file of the module a build of ./cmd/...
// can read: all but tests, testdata, the bin directory and .git. Docs are
// in it too (an edit of one costs a build; leaving out a file a build
// embeds would cost a wrong binary).
func sourceKey(modDir, env string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "pier test build 1\n%s\n", env)
	err := filepath.WalkDir(modDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(modDir, path)
		if d.IsDir() {
			if rel == "bin" || d.Name() == "testdata" || (strings.HasPrefix(d.Name(), ".") && rel != ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || strings.HasSuffix(d.Name(), "_test.go") {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "%s\x00", rel)
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hash the module's sources: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// lockBuild takes a shared lock on dir's lock file, which keeps the build
// from eviction, and builds into dir with mk unless a complete build is
// there already. A nil file means the build was removed while this
// process waited for it: the caller starts over.
func lockBuild(dir string, mk func(dir string) error) (*os.File, error) {
	use, err := lockFile(dir+".lock", unix.LOCK_SH)
	if err != nil || use == nil {
		return nil, err
	}
	if !complete(dir) {
		if err := buildLocked(dir, mk); err != nil {
			use.Close()
			return nil, err
		}
	}
	return use, nil
}

// buildLocked builds dir with mk under dir's build lock, which makes
// concurrent first users wait for one build rather than make their own;
// the caller's shared lock on dir's lock file keeps evictions away (and
// with them the removal of the build lock's file).
func buildLocked(dir string, mk func(dir string) error) error {
	b, err := os.OpenFile(dir+".build", os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := unix.Flock(int(b.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s.build: %w", dir, err)
	}
	if complete(dir) {
		return nil // built while this process waited
	}
	err = os.RemoveAll(dir) // what a build cut short left
	if err == nil {
		err = os.Mkdir(dir, 0o755)
	}
	if err == nil {
		err = mk(dir)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, ".complete"), nil, 0o644)
	}
	return err
}

// lockFile opens (creating) and locks path with how (LOCK_EX, LOCK_SH,
// possibly | LOCK_NB). It returns nil without error when the path no
// longer names the file once locked (removed in between), and when a
// non-blocking lock is held by someone else.
func lockFile(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if !sameFile(f, path) {
		f.Close()
		return nil, nil
	}
	return f, nil
}

// sameFile reports whether path still names the open file f.
func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Lstat(path)
	return err == nil && os.SameFile(a, b)
}

// complete reports whether dir holds a finished build of this user's: a
// directory (not a link) that the process's user owns and nobody else can
// write, with the .complete marker. The temp directory is everyone's and
// a build's name can be computed by anyone who reads the sources, while
// the tests run the binaries as root: a directory someone else made is
// not a build, and buildLocked removes it (or, when it cannot, fails).
func complete(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o022 != 0 {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return false
	}
	_, err = os.Lstat(filepath.Join(dir, ".complete"))
	return err == nil
}

// build builds ./cmd/... into the empty dir, as `make build` does
// (static, as installed on nodes), but with the node lock in dir, not the
// machine's /run/pier (the one setting a link may change, see package
// nodelock).
func build(dir, modDir string) error {
	lock := "-X github.com/pier-cni/pier/internal/nodelock.defaultPath=" + filepath.Join(dir, "run", "node.lock")
	cmd := exec.Command("go", "build", "-ldflags", lock, "-o", dir+"/", "./cmd/...")
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

// evictOthers removes the other builds no process holds.
func evictOthers(keep string) {
	locks, _ := filepath.Glob(filepath.Join(os.TempDir(), buildPrefix+"*.lock")) // a bad pattern is the only error
	for _, l := range locks {
		dir := strings.TrimSuffix(l, ".lock")
		if dir == keep {
			continue
		}
		f, err := lockFile(l, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil || f == nil {
			continue // in use, or gone already
		}
		// Directory first: a lock file without its directory is rebuilt,
		// a directory without its lock file would never be removed.
		if os.RemoveAll(dir) == nil {
			_ = os.Remove(dir + ".build") // best effort, as below
			_ = os.Remove(l)              // best effort: the next eviction tries again
		}
		f.Close()
	}
}
