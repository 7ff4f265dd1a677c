package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/pier-cni/pier/internal/cnierr"
)

const testCIDR = "10.244.0.0/16"

// queueFileEntries reads the node's release queue from disk.
func queueFileEntries(t *testing.T, n *testNode) []queued {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dataDir, queueFile))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var list []queued
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("queue file: %v", err)
	}
	return list
}

// TestQueuedReleaseNeverFreesALaterAllocation guards against handing one
// address to two containers through the DEL queue. A DEL while etcd is
// down is queued; a runtime retrying the sandbox then ADDs the same
// container ID and interface again. The queued release used to name only
// the owner, so draining it freed the address the new ADD held, and the
// next containers got that address too; and an ADD during the outage
// dropped the owner's entry from the queue on disk, losing the release.
// Now the queued release names the exact allocation: it survives the
// ADD, and frees the old allocation only.
func TestQueuedReleaseNeverFreesALaterAllocation(t *testing.T) {
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	n := te.startNode(t, "n1", Options{})
	conf := netConf(t, "net", testCIDR)
	old := allocate(t, n, conf, "sandbox")

	te.proxy.down()
	if got, err := n.Check(ctxT(t), conf, owner("sandbox")); err != nil || !slices.Equal(got, []netip.Addr{old}) {
		t.Fatalf("Check with etcd down = %v, %v; want %s from memory", got, err, old)
	}
	if _, err := n.Release(ctxT(t), conf, owner("sandbox")); err != nil {
		t.Fatalf("DEL with etcd down: %v, want it queued", err)
	}
	if q := queueFileEntries(t, n); len(q) != 1 || q[0].Addr != old || q[0].ID == "" {
		t.Fatalf("queue on disk = %+v, want the allocation of %s with its identity", q, old)
	}
	if _, err := n.Check(ctxT(t), conf, owner("sandbox")); cnierr.CodeOf(err) != cnierr.UnknownContainer {
		t.Fatalf("Check after the queued DEL: %v, want code 3 (its release is queued)", err)
	}
	// The runtime retries the sandbox while etcd is still down.
	if _, err := n.Allocate(ctxT(t), conf, owner("sandbox")); cnierr.CodeOf(err) != cnierr.TryAgainLater {
		t.Fatalf("ADD with etcd down: %v, want code 11", err)
	}
	if q := queueFileEntries(t, n); len(q) != 1 || q[0].Addr != old {
		t.Fatalf("after an ADD during the outage the queue on disk is %+v, want the release of %s kept", q, old)
	}

	te.proxy.up(t)
	waitFor(t, "etcd back for the node", func() bool { return n.Status(ctxT(t), conf) == nil })
	again := allocate(t, n, conf, "sandbox") // the same container ID and ifname
	waitFor(t, "the queue to drain", func() bool { return len(queueFileEntries(t, n)) == 0 })
	held := holders(t, cli)
	if held[again] != "sandbox" {
		t.Fatalf("after the drain etcd records %s as held by %q, want the new sandbox's", again, held[again])
	}
	if again == old {
		t.Fatalf("the new sandbox got %s, whose release was still queued", old)
	}
	// Fill the node's blocks round the clock: nobody else may get the
	// new sandbox's address.
	for i := range 40 {
		if got := allocate(t, n, conf, fmt.Sprint("other", i)); got == again {
			t.Fatalf("container other%d got %s, which the new sandbox holds", i, got)
		}
	}
	if got, err := n.Check(ctxT(t), conf, owner("sandbox")); err != nil || !slices.Equal(got, []netip.Addr{again}) {
		t.Fatalf("Check(sandbox) = %v, %v; want %s", got, err, again)
	}
}

// TestQueueSurvivesRestart: a release queued by a pierd that stops before
// etcd returns is applied by the next pierd; and a queue written before
// releases named allocations (owners only) is resolved against the blocks
// as first read, before any new allocation.
func TestQueueSurvivesRestart(t *testing.T) {
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	dataDir := t.TempDir()
	n := te.startNode(t, "n1", Options{DataDir: dataDir})
	conf := netConf(t, "net", testCIDR)
	a := allocate(t, n, conf, "a")
	b := allocate(t, n, conf, "b")
	te.proxy.down()
	if _, err := n.Release(ctxT(t), conf, owner("a")); err != nil {
		t.Fatal(err)
	}
	n.Close()
	// b's release as an older pierd queued it: by owner.
	q := queueFileEntries(t, n)
	q = append(q, queued{Alloc: Alloc{Network: "net", ContainerID: "b", IfName: "eth0"}})
	raw, _ := json.Marshal(q)
	if err := os.WriteFile(filepath.Join(dataDir, queueFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	te.proxy.up(t)
	n2 := te.startNode(t, "n1", Options{DataDir: dataDir})
	waitFor(t, "the queue to drain", func() bool { return len(queueFileEntries(t, n2)) == 0 })
	held := holders(t, cli)
	if _, ok := held[a]; ok {
		t.Errorf("%s (a) still held after the drain", a)
	}
	if _, ok := held[b]; ok {
		t.Errorf("%s (b, queued by owner) still held after the drain", b)
	}
}

// TestQueueWriteFailureFailsDEL guards the release queue's writes: when the
// queue cannot be written, a DEL with etcd down must fail (so the runtime
// retries it) rather than succeed and lose the release at the next restart.
func TestQueueWriteFailureFailsDEL(t *testing.T) {
	te := startEtcd(t)
	te.initCluster(t, testCIDR)
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	n := te.startNode(t, "n1", Options{DataDir: dataDir})
	conf := netConf(t, "net", testCIDR)
	allocate(t, n, conf, "a")
	te.proxy.down()
	if err := os.RemoveAll(dataDir); err != nil { // the queue's directory is gone
		t.Fatal(err)
	}
	_, err := n.Release(ctxT(t), conf, owner("a"))
	if cnierr.CodeOf(err) != cnierr.IOFailure {
		t.Fatalf("DEL with etcd down and an unwritable queue: %v (code %d), want code 5", err, cnierr.CodeOf(err))
	}
	// A retry finds the release queued in memory only: it must still fail.
	if _, err := n.Release(ctxT(t), conf, owner("a")); cnierr.CodeOf(err) != cnierr.IOFailure {
		t.Fatalf("retried DEL: %v, want code 5 while the queue is not on disk", err)
	}
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Release(ctxT(t), conf, owner("a")); err != nil {
		t.Fatalf("retried DEL once the queue can be written: %v", err)
	}
	if q := queueFileEntries(t, n); len(q) != 1 {
		t.Fatalf("queue on disk = %+v, want the release", q)
	}
}

// TestEtcdDownAddFailsWithinOneTimeout guards "ADD fails with code 11
// within 2 s" with etcd unreachable: an ADD and the release of its
// rollback cost at most one etcd operation timeout between them, even
// with releases queued (the queue used to be retried in every batch, and
// every second from the allocator's own loop, each retry holding calls up
// for a timeout: 3.0–4.5 s). Counted in etcd transactions, and measured.
func TestEtcdDownAddFailsWithinOneTimeout(t *testing.T) {
	te := startEtcd(t)
	te.initCluster(t, testCIDR)
	n := te.startNode(t, "n1", Options{})
	conf := netConf(t, "net", testCIDR)
	allocate(t, n, conf, "a")
	allocate(t, n, conf, "queued")
	te.proxy.down()
	if _, err := n.Release(ctxT(t), conf, owner("queued")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * DrainEvery) // let the allocator's own drain attempts run
	before, _ := n.Stats()
	start := time.Now()
	_, err := n.Allocate(ctxT(t), conf, owner("new"))
	if cnierr.CodeOf(err) != cnierr.TryAgainLater {
		t.Fatalf("ADD: %v, want code 11", err)
	}
	if _, err := n.Release(ctxT(t), conf, owner("new")); err != nil { // the plugin's rollback
		t.Fatal(err)
	}
	took := time.Since(start)
	after, _ := n.Stats()
	t.Logf("MEASURE etcd down: ADD → 11 plus its rollback in %v (%d etcd transactions tried)", took, after-before)
	if after-before > 1 {
		t.Errorf("ADD and its rollback tried %d etcd transactions with etcd down, want at most 1", after-before)
	}
}

// TestEtcdErrorsAreTryAgainLater guards the CNI code of cluster-mode
// failures: whatever etcd answers when it cannot take a write — a
// deadline when it is gone, an error of its own when it refuses (here: its
// space quota is exhausted, "database space exceeded") — an ADD fails with
// code 11, which the runtime retries, naming etcd. Only deadlines used to
// be coded: any other etcd error came back bare, as an I/O failure (5).
func TestEtcdErrorsAreTryAgainLater(t *testing.T) {
	te := startEtcd(t, func(c *embed.Config) { c.QuotaBackendBytes = 1 << 20 })
	cli := te.initCluster(t, testCIDR)
	n := te.startNode(t, "n1", Options{})
	conf := netConf(t, "net", testCIDR)
	allocate(t, n, conf, "a")
	fill := strings.Repeat("x", 64<<10)
	for i := 0; ; i++ {
		if _, err := cli.Put(ctxT(t), fmt.Sprint("/filler/", i), fill); err != nil {
			break // the quota is exhausted: etcd refuses writes
		}
	}
	_, err := n.Allocate(ctxT(t), conf, owner("b"))
	if cnierr.CodeOf(err) != cnierr.TryAgainLater || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("ADD with etcd refusing writes: %v (code %d), want code 11 naming etcd", err, cnierr.CodeOf(err))
	}
	te.proxy.down()
	_, err = n.Allocate(ctxT(t), conf, owner("c"))
	if cnierr.CodeOf(err) != cnierr.TryAgainLater || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("ADD with etcd gone: %v (code %d), want code 11 naming etcd", err, cnierr.CodeOf(err))
	}
}

// TestQueueFile: the queue on disk round-trips, reads the owner-only
// entries older pierds wrote, resolves them against the node's
// allocations, and neither reads nor writes through a symlink planted at
// its names.
func TestQueueFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, queueFile)
	legacy := `[{"network":"n","containerID":"old","ifName":"eth0"}]`
	if err := os.WriteFile(path, []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	q, err := openQueue(path)
	if err != nil || len(q.owners) != 1 || len(q.exact) != 0 {
		t.Fatalf("legacy queue: %+v, %v", q, err)
	}
	old := Alloc{Network: "n", ContainerID: "old", IfName: "eth0"}
	a1, a2 := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	held := map[Alloc]map[netip.Addr]Allocation{old: {a1: {Alloc: old, ID: "i1"}}}
	if err := q.resolve(held); err != nil {
		t.Fatal(err)
	}
	if err := q.add(queued{Alloc: Alloc{Network: "n", ContainerID: "b", IfName: "eth0"}, Addr: a2, ID: "i2"}); err != nil {
		t.Fatal(err)
	}
	back, err := openQueue(path)
	if err != nil || len(back.exact) != 2 || len(back.owners) != 0 || !back.holds(a1, Allocation{Alloc: old, ID: "i1"}) || back.holds(a1, Allocation{Alloc: old, ID: "other"}) {
		t.Fatalf("queue after resolve and add: %+v, %v", back, err)
	}
	if err := back.remove([]netip.Addr{a1, a2}); err != nil || !back.empty() {
		t.Fatalf("remove: %v, %+v", err, back)
	}

	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := back.add(queued{Alloc: old, Addr: a1, ID: "i1"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("the queue was written through a symlink at its temp name: %q", b)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	if _, err := openQueue(path); err == nil {
		t.Fatal("a symlink at the queue's name was read")
	}
}
