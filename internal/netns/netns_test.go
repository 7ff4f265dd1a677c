package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
	"golang.org/x/sys/unix"
)

// TestOpenRefusesWhatIsNotANetworkNamespace: a missing path wraps
// fs.ErrNotExist; a regular file, a file under /proc and a namespace of
// another kind (which pkg/ns alone accepts) are ErrNotNetNS.
func TestOpenRefusesWhatIsNotANetworkNamespace(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want error
	}{
		{filepath.Join(t.TempDir(), "absent"), fs.ErrNotExist},
		{file, ErrNotNetNS},
		{"/proc/self/status", ErrNotNetNS},
		{"/proc/self/ns/mnt", ErrNotNetNS},
		{"/proc/self/ns/uts", ErrNotNetNS},
	} {
		h, err := Open(tc.path)
		if !errors.Is(err, tc.want) {
			t.Errorf("Open(%s) = %v, %v; want %v", tc.path, h, err, tc.want)
		}
		if h != nil {
			h.Close() //nolint:errcheck // read-only handle
		}
	}
}

// TestIsCurrentAndDo: the caller's own namespace is current, a sandbox
// namespace is not, and Do runs its function inside the namespace.
func TestIsCurrentAndDo(t *testing.T) {
	sb := testnet.New(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	own := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	if same, err := IsCurrent(own); err != nil || !same {
		t.Errorf("IsCurrent(own thread's namespace) = %v, %v; want true", same, err)
	}
	if same, err := IsCurrent(sb.Node.Path); err != nil || same {
		t.Errorf("IsCurrent(sandbox node) = %v, %v; want false", same, err)
	}
	var inside bool
	err := Do(sb.Node.Path, func() error {
		var err error
		inside, err = IsCurrent(sb.Node.Path)
		return err
	})
	if err != nil || !inside {
		t.Errorf("Do: inside the node = %v, %v; want true", inside, err)
	}
	if _, err := IsCurrent("/proc/self/ns/mnt"); !errors.Is(err, ErrNotNetNS) {
		t.Errorf("IsCurrent(a mount namespace): %v; want ErrNotNetNS", err)
	}
}
