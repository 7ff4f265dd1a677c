package pierd

// The socket's life cycle.
//
//	<dir>/            0700, owned by pierd's uid; 0711 with --allow-uid, so the
//	                  allowed users can reach the socket but not list the dir
//	<dir>/pierd.sock  0600; 0666 with --allow-uid (SO_PEERCRED is the gate)
//	<dir>/pierd.sock.lock  flock(2) held for pierd's lifetime
//
// Start-up: take the lock (a second pierd on the same socket fails here,
// without touching the first one's socket); then, if a file is at the
// socket's path, connect to it: a live socket (someone else answers, e.g. a
// pierd of another build with another lock) is refused; a stale one (left
// by a killed pierd: connection refused) is removed; anything that is not a
// socket is refused rather than deleted. The directory must be pierd's own:
// one owned by another user, or sticky (a shared directory such as /tmp),
// is refused, because pierd sets its mode.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dirMode        = 0o700
	dirModeShared  = 0o711
	sockMode       = 0o600
	sockModeShared = 0o666
)

// socketLock is the lock file beside the socket, held while pierd runs.
type socketLock struct{ f *os.File }

func (l *socketLock) release() error { return l.f.Close() }

// listen prepares dir and socket and returns the listener; shared says
// whether users other than root may connect (--allow-uid).
func listen(path string, shared bool) (net.Listener, *socketLock, error) {
	dir := filepath.Dir(path)
	mode, smode := os.FileMode(dirMode), os.FileMode(sockMode)
	if shared {
		mode, smode = dirModeShared, sockModeShared
	}
	if err := prepareDir(dir, mode); err != nil {
		return nil, nil, err
	}
	lock, err := lockSocket(path)
	if err != nil {
		return nil, nil, err
	}
	if err := clearStale(path); err != nil {
		return nil, nil, errors.Join(err, lock.release())
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("listen on %s: %w", path, err), lock.release())
	}
	// The directory is closed to others until now, so nobody could reach
	// the socket while it had the umask's mode.
	if err := os.Chmod(path, smode); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("chmod %s: %w", path, err), l.Close(), lock.release())
	}
	return l, lock, nil
}

// prepareDir creates dir with mode, or checks an existing one is pierd's
// own and sets its mode.
func prepareDir(dir string, mode os.FileMode) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, mode); err != nil {
			return fmt.Errorf("create socket directory: %w", err)
		}
		return os.Chmod(dir, mode) // MkdirAll's mode went through the umask
	}
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("socket directory %s is not a directory", dir)
	case !ok || int(st.Uid) != os.Geteuid():
		return fmt.Errorf("socket directory %s is not owned by pierd's user (uid %d); give pierd a directory of its own", dir, os.Geteuid())
	case fi.Mode()&os.ModeSticky != 0:
		return fmt.Errorf("socket directory %s is a shared (sticky) directory; give pierd a directory of its own", dir)
	}
	if fi.Mode().Perm() != mode {
		if err := os.Chmod(dir, mode); err != nil {
			return fmt.Errorf("chmod socket directory: %w", err)
		}
	}
	return nil
}

func lockSocket(path string) (*socketLock, error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close() // the flock error is the one to report
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another pierd is serving %s (it holds %s.lock)", path, path)
		}
		return nil, fmt.Errorf("lock %s.lock: %w", path, err)
	}
	return &socketLock{f: f}, nil
}

// clearStale removes a socket nobody answers on; see the file comment.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close() // only probing
		return fmt.Errorf("%s is a live socket: another process serves it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}
