package testnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

// Binaries builds ./cmd/... of this module once per test process and returns
// the directory holding pier, pier-ipam and pierctl. The directory is shared
// by all tests of the process and removed by the OS temp cleaner, not by t,
// because later tests of the same process use it too.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		var root []byte
		root, buildErr = exec.Command("go", "env", "GOMOD").Output()
		if buildErr != nil {
			return
		}
		modDir := filepath.Dir(strings.TrimSpace(string(root)))
		buildDir, buildErr = os.MkdirTemp("", "pier-bin-")
		if buildErr != nil {
			return
		}
		// Built as `make build` does: static, as installed on nodes; but
		// with the node lock in the build directory, not the machine's
		// /run/pier (the one setting a link may change, see nodelock).
		lock := "-X github.com/pier-cni/pier/internal/nodelock.defaultPath=" + filepath.Join(buildDir, "run", "node.lock")
		cmd := exec.Command("go", "build", "-ldflags", lock, "-o", buildDir+"/", "./cmd/...")
		cmd.Dir = modDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("building binaries: %v\n%s", buildErr, buildOut)
	}
	return buildDir
}
