package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockFile takes the exclusive flock(2) on path and returns its release.
//
// Design: a non-blocking flock first, so the uncontended case costs one
// syscall. When the lock is held, a helper goroutine blocks in flock, so the
// kernel hands the lock over the moment its holder lets go: no polling
// schedule adds latency to a burst of parallel ADDs. If ctx ends first the
// caller returns and the helper stays behind; whenever the helper does get the
// lock it releases it at once by closing the file, so an abandoned wait can
// never keep the store locked (this matters in the long-running daemon).
//
// timeout bounds the wait when ctx has no deadline.
func lockFile(ctx context.Context, path string, timeout time.Duration) (release func() error, err error) {
	// O_NOFOLLOW: a symlink planted at the lock's name is refused, not
	// created through. Nothing is ever written to the lock file.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, fileMode)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("lock file %s: %w", path, errNotRegular)
	}
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	err = flock(f, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return f.Close, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		return nil, errors.Join(fmt.Errorf("flock %s: %w", path, err), f.Close())
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	done := make(chan error, 1)
	go func() { done <- flock(f, unix.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			return nil, errors.Join(fmt.Errorf("flock %s: %w", path, err), f.Close())
		}
		return f.Close, nil
	case <-ctx.Done():
		go func() {
			<-done
			_ = f.Close() // releases the lock if the helper got it; nothing to report to
		}()
		return nil, ctx.Err()
	}
}

// flock retries on EINTR: a signal during a blocking wait is not a failure.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
