// Package netns opens network namespaces by path and runs code inside them.
// It is containernetworking/plugins' pkg/ns (the reference plugins' own,
// which links nothing beyond golang.org/x/sys) with what a plugin that is
// handed CNI_NETNS by a runtime needs on top:
//
//   - Open checks that the path is a network namespace. pkg/ns only checks
//     that it lives on nsfs (or procfs), so a mount or UTS namespace, or a
//     file under /proc, would pass and fail later with a bare EINVAL from
//     setns; here it is ErrNotNetNS at once, which the plugin reports as a
//     bad CNI_NETNS (code 4).
//   - Missing paths wrap fs.ErrNotExist and non-namespaces ErrNotNetNS, so
//     callers test them with errors.Is (pkg/ns returns its own error types).
//   - IsCurrent tells whether a path is the caller's own namespace: ADD and
//     DEL must refuse to treat the node as a container.
package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// ErrNotNetNS: the path exists but is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace")

// NS is an open network namespace.
type NS = ns.NetNS

// nsGetNSType is NS_GET_NSTYPE from linux/nsfs.h (_IO(0xb7, 0x3)): the
// kind of namespace an nsfs file descriptor refers to.
const nsGetNSType = 0xb703

// Open opens the namespace at path and checks that it is a network
// namespace (a bind mount under /var/run/netns or a /proc/PID/ns/net link),
// not a regular file, a directory or another kind of namespace.
func Open(path string) (NS, error) {
	h, err := ns.GetNS(path)
	if err != nil {
		var missing ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		switch {
		case errors.As(err, &missing) || errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("netns %s: %w (%v)", path, fs.ErrNotExist, err)
		case errors.As(err, &notNS):
			return nil, fmt.Errorf("netns %s: %w (%v)", path, ErrNotNetNS, err)
		}
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	kind, err := unix.IoctlRetInt(int(h.Fd()), nsGetNSType)
	if err != nil || kind != unix.CLONE_NEWNET {
		h.Close() //nolint:errcheck // read-only handle
		return nil, fmt.Errorf("netns %s: %w", path, ErrNotNetNS)
	}
	return h, nil
}

// IsCurrent reports whether the namespace at path is the calling thread's.
func IsCurrent(path string) (bool, error) {
	target, err := Open(path)
	if err != nil {
		return false, err
	}
	defer target.Close() //nolint:errcheck // read-only handle
	self, err := ns.GetCurrentNS()
	if err != nil {
		return false, fmt.Errorf("own netns: %w", err)
	}
	defer self.Close() //nolint:errcheck // read-only handle
	return same(target, self)
}

// same reports whether two open namespaces are one: nsfs gives each
// namespace one inode.
func same(a, b NS) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &sa); err != nil {
		return false, fmt.Errorf("stat %s: %w", a.Path(), err)
	}
	if err := unix.Fstat(int(b.Fd()), &sb); err != nil {
		return false, fmt.Errorf("stat %s: %w", b.Path(), err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// Do runs f on a thread switched into the namespace at path and switches
// back. If switching back fails, the thread is left locked so the Go runtime
// retires it instead of reusing a thread in the wrong namespace (pkg/ns
// runs f on a goroutine of its own for that reason).
func Do(path string, f func() error) error {
	target, err := Open(path)
	if err != nil {
		return err
	}
	defer target.Close() //nolint:errcheck // read-only handle
	return target.Do(func(NS) error { return f() })
}

// Exists reports whether path names something; DEL treats a missing netns as
// already cleaned up.
func Exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
