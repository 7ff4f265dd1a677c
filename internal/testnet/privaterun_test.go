package testnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// privateRunProbe, set, makes TestPrivateRun the program under test: it
// calls PrivateRun and writes a file into /run, whose name the variable
// gives.
const privateRunProbe = "PIER_TEST_PRIVATE_RUN_PROBE"

// TestPrivateRun guards the benchmarks' promise to leave the machine's
// /run alone: a file the program writes into /run after PrivateRun lands
// in a tmpfs of its own, and the machine's /run does not get it.
func TestPrivateRun(t *testing.T) {
	if name := os.Getenv(privateRunProbe); name != "" {
		probe(t, name)
		return
	}
	RequireRoot(t)
	name := UniqueName("pier-private-run-test-")
	cmd := exec.Command(os.Args[0], "-test.run=^TestPrivateRun$", "-test.v=true")
	cmd.Env = append(os.Environ(), privateRunProbe+"="+name)
	out, err := cmd.CombinedOutput()
	t.Cleanup(func() { _ = os.Remove(filepath.Join("/run", name)) }) // only if the test fails
	if err != nil {
		t.Fatalf("the probe failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "probe: wrote /run/"+name+" on a tmpfs") {
		t.Fatalf("the probe did not run under PrivateRun:\n%s", out)
	}
	if _, err := os.Lstat(filepath.Join("/run", name)); !os.IsNotExist(err) {
		t.Fatalf("the file the probe wrote is in the machine's /run (lstat: %v)", err)
	}
}

func probe(t *testing.T, name string) {
	if err := PrivateRun(); err != nil { // exits in the parent
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/run", &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.TMPFS_MAGIC {
		t.Fatalf("/run is not a tmpfs (type %#x)", st.Type)
	}
	if err := os.WriteFile(filepath.Join("/run", name), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("probe: wrote /run/%s on a tmpfs", name)
}
