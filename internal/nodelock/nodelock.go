// Package nodelock is the lock by which every Pier process of a node
// takes turns at what the node's networks share: a bridge's setup and
// teardown (the accepts in the host's filters, among them iptables-nft's
// one chain PIER-FORWARD and its jump from FORWARD, which serve every
// bridge), and route_localnet with its guard.
//
// # One lock per node
//
// A lock kept with a network's state would not do: two networks with
// different data directories (a local-mode network and a daemon-mode one,
// say) could then run at once, one finding the jump to PIER-FORWARD in
// place while the other removed the chain it found empty, leaving accepts
// in a chain nothing jumps to. So the lock is one file per node,
// /run/pier/node.lock: /run forgets it at a reboot, and /run/pier is
// root's (pierd keeps its socket there).
//
// Its path is fixed in the binaries, not read from a config or the
// environment, which a caller could make differ between networks.
// Callers take it from DefaultPath and pass it down (tests in one process
// pass a path of their own); the tests' build of the binaries points
// DefaultPath into a temp directory at link time, so that no test writes
// the machine's /run.
//
// # Safety
//
// The plugin runs as root: whoever could plant a symlink at the lock's
// name could make it create a file anywhere. So the directories on the
// way must be real directories owned by root (or by the uid Pier runs as),
// not writable by group or others (sticky ones like /tmp are fine above
// the lock's own directory), and the file is opened without following
// symlinks and must be a regular file of root's.
package nodelock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// defaultPath is the node's lock. A variable only so that the tests'
// build of the binaries can set it at link time (-ldflags -X); nothing
// changes it at run time.
var defaultPath = "/run/pier/node.lock"

// DefaultPath is the node lock of the installed binaries.
func DefaultPath() string { return defaultPath }

// Acquire waits for the node lock at path and takes it; release gives it
// back. The lock's directory is created (0755) when missing.
func Acquire(path string) (release func(), err error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("node lock %q: not an absolute path", path)
	}
	path = filepath.Clean(path)
	if err := prepareDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("node lock %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open node lock: %w", err)
	}
	if err := checkFile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("node lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { _ = f.Close() }, nil // closing drops the lock
}

// prepareDir checks every directory from the top down to dir, creating
// what is missing: each must be a real directory owned by root or Pier's
// user and not writable by group or others; sticky ones pass above dir.
func prepareDir(dir string) error {
	p := ""
	parts := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	for i, part := range parts {
		if part == "" {
			continue // dir is "/"
		}
		p += "/" + part
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			if err = os.Mkdir(p, 0o755); err == nil || errors.Is(err, fs.ErrExist) {
				fi, err = os.Lstat(p)
			}
		}
		if err != nil {
			return err
		}
		if err := checkDir(p, fi, i == len(parts)-1); err != nil {
			return err
		}
	}
	return nil
}

func checkDir(p string, fi fs.FileInfo, last bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	writable := fi.Mode().Perm()&0o022 != 0
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link; Pier does not follow links to its node lock", p)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", p)
	case !ok:
		return fmt.Errorf("cannot read the owner of %s", p)
	case !trusted(st.Uid):
		return fmt.Errorf("%s is owned by uid %d, who could make Pier create files elsewhere; fix: chown 0 %s", p, st.Uid, p)
	case writable && (last || fi.Mode()&fs.ModeSticky == 0):
		return fmt.Errorf("%s is writable by group or others (mode %04o), who could make Pier create files elsewhere; fix: chmod go-w %s",
			p, fi.Mode().Perm(), p)
	}
	return nil
}

func checkFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return errors.New("not a regular file")
	case !ok || !trusted(st.Uid):
		return errors.New("not owned by root")
	}
	return nil
}

// trusted reports whether uid may own the lock and its directories:
// root, or the user Pier runs as.
func trusted(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }
