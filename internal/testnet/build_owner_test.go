package testnet

import (
	"os"
	"path/filepath"
	"testing"
)

// TestBuildPlantedByAnotherUserIsNotRun guards the tests' shared build in
// the machine's temp directory against a build planted there by another
// user. The directory's name is a hash of the module's sources, which
// anyone who can read them can compute; /tmp is writable by everyone; and
// the tests run the binaries as root. A directory with a .complete marker
// made by someone else before the first test process must not be taken
// for the build: it is built again (or refused), never run. Fails on
// main: lockBuild only looks for the marker, and hands back the planted
// directory without building.
func TestBuildPlantedByAnotherUserIsNotRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files of another user")
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dir := filepath.Join(os.TempDir(), buildPrefix+"0123456789abcdef")
	const nobody = 65534
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(dir, "pier")
	for _, f := range []string{planted, filepath.Join(dir, ".complete")} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\necho not pier\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(f, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}

	built := false
	mk := func(d string) error {
		built = true
		return os.WriteFile(filepath.Join(d, "pier"), []byte("binary"), 0o755)
	}
	f, err := lockBuild(dir, mk)
	if f != nil {
		defer f.Close()
	}
	if err != nil {
		return // refusing the planted directory is as good as rebuilding it
	}
	if !built {
		t.Fatalf("a build directory made by uid %d, with its .complete marker, was taken for the tests' build without building: its binaries would run as root", nobody)
	}
	if data, err := os.ReadFile(planted); err != nil || string(data) != "binary" {
		t.Fatalf("the build directory's pier is not the build's (%q, %v)", data, err)
	}
}
