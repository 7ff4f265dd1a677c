// Package netns opens network namespaces by path and runs code inside them.
//
// It does what containernetworking/plugins' pkg/ns does for Pier, without its
// dependencies: that package links OpenTelemetry and net/http, which a plugin
// binary exec'd once per container pays for at every start.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNotNetNS: the path exists but is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace")

// Handle is an open network namespace.
type Handle = vnetns.NsHandle

// nsGetNSType is NS_GET_NSTYPE from linux/nsfs.h (_IO(0xb7, 0x3)): the
// kind of namespace an nsfs file descriptor refers to.
const nsGetNSType = 0xb703

// Open opens the namespace at path and checks that it is a network
// namespace (a bind mount under /var/run/netns or a /proc/PID/ns/net link),
// not a regular file, a directory or another kind of namespace.
func Open(path string) (Handle, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return vnetns.None(), fmt.Errorf("netns %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return vnetns.None(), fmt.Errorf("netns %s: %w", path, ErrNotNetNS)
	}
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		return vnetns.None(), fmt.Errorf("netns %s: %w", path, err)
	}
	kind, err := unix.IoctlRetInt(int(h), nsGetNSType)
	if err != nil || kind != unix.CLONE_NEWNET {
		h.Close() //nolint:errcheck // read-only handle
		return vnetns.None(), fmt.Errorf("netns %s: %w", path, ErrNotNetNS)
	}
	return h, nil
}

// Current opens the calling thread's namespace.
func Current() (Handle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return vnetns.Get()
}

// IsCurrent reports whether the namespace at path is the calling thread's.
func IsCurrent(path string) (bool, error) {
	target, err := Open(path)
	if err != nil {
		return false, err
	}
	defer target.Close() //nolint:errcheck // read-only handle
	self, err := Current()
	if err != nil {
		return false, fmt.Errorf("own netns: %w", err)
	}
	defer self.Close() //nolint:errcheck // read-only handle
	return self.Equal(target), nil
}

// Do runs f on a thread switched into the namespace at path and switches
// back. If switching back fails, the thread is left locked so the Go runtime
// retires it instead of reusing a thread in the wrong namespace.
func Do(path string, f func() error) error {
	target, err := Open(path)
	if err != nil {
		return err
	}
	defer target.Close() //nolint:errcheck // read-only handle

	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("own netns: %w", err)
	}
	defer orig.Close() //nolint:errcheck // read-only handle
	if err := vnetns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	ferr := f()
	if err := vnetns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("return from netns %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Exists reports whether path names something; DEL treats a missing netns as
// already cleaned up.
func Exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
