package testnet

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBuildsDoNotPileUp guards the machine's temp directory against the
// tests' builds of the binaries (about 130 MB each), which were made once
// per test process and never removed: concurrent users of one state of
// the sources share one build, made once; a build nobody holds is removed
// by the next process that takes its own; a build in use is not; a failed
// build leaves nothing a later process would take for complete. flock
// treats each open file as its own holder, so goroutines of one test
// stand in for processes.
func TestBuildsDoNotPileUp(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dir := func(key string) string { return filepath.Join(os.TempDir(), buildPrefix+key) }
	if filepath.Dir(dir("x")) != tmp {
		t.Fatalf("os.TempDir() is %s, not the test's %s", os.TempDir(), tmp)
	}
	var builds atomic.Int32
	mk := func(d string) error {
		builds.Add(1)
		return os.WriteFile(filepath.Join(d, "pier"), []byte("binary"), 0o755)
	}
	take := func(key string) *os.File {
		t.Helper()
		for {
			f, err := lockBuild(dir(key), mk)
			if err != nil {
				t.Fatal(err)
			}
			if f != nil {
				return f
			}
		}
	}

	// Four users of one state of the sources at once: one build.
	var wg sync.WaitGroup
	held := make([]*os.File, 4)
	for i := range held {
		wg.Go(func() { held[i] = take("aaaa") })
	}
	wg.Wait()
	if n := builds.Load(); n != 1 {
		t.Fatalf("%d builds for one state of the sources", n)
	}

	// A user of other sources, while they still hold theirs: both stay.
	other := take("bbbb")
	evictOthers(dir("bbbb"))
	if !complete(dir("aaaa")) || !complete(dir("bbbb")) {
		t.Fatal("a build in use was removed")
	}
	// Once they are gone (their processes ended), the next user removes it.
	for _, f := range held {
		f.Close()
	}
	evictOthers(dir("bbbb"))
	if _, err := os.Stat(dir("aaaa")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a build nobody holds stays: %v", err)
	}
	if _, err := os.Stat(dir("aaaa") + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("its lock file stays: %v", err)
	}
	// A process waiting on a lock file that is removed meanwhile starts
	// over on a new one.
	waiting, err := os.OpenFile(dir("bbbb")+".lock", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	other.Close()
	evictOthers(dir("cccc"))
	if err := unix.Flock(int(waiting.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	if sameFile(waiting, dir("bbbb")+".lock") {
		t.Fatal("the lock file of a removed build still names the removed file")
	}
	take("bbbb").Close()
	if n := builds.Load(); n != 3 {
		t.Fatalf("%d builds, want 3: the removed build is built again", n)
	}

	// A failed build is not taken for complete by the next user.
	failing := func(string) error { return errors.New("compile error") }
	if _, err := lockBuild(dir("dddd"), failing); err == nil {
		t.Fatal("a failed build was reported as done")
	}
	if complete(dir("dddd")) {
		t.Fatal("a failed build is marked complete")
	}
	take("dddd").Close()
	if n := builds.Load(); n != 4 {
		t.Fatalf("%d builds, want 4: the failed one is built again", n)
	}
}
