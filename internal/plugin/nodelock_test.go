package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodelock"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestBridgeTeardownTakesTheNodeLock guards the setups and teardowns of
// two networks whose data directories differ (a local-mode network and a
// daemon-mode one, whose records live beside pierd's socket). Their
// bridges share the host's filters (iptables-nft's one chain PIER-FORWARD
// and its jump from FORWARD): one network's first ADD may find the jump in
// place while the other's last DEL removes the chain it found empty, and
// the first network's accepts end up in a chain nothing jumps to. The lock
// that orders them used to live in each network's data directory, so it
// ordered nothing between them. Here network A's setup holds the node
// lock; the last DEL of network B, on another bridge and with another data
// directory, must wait for it before tearing its bridge down.
func TestBridgeTeardownTakesTheNodeLock(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	b := netConf{name: "netb", bridge: "pt-brb", subnet: "10.41.0.0/24", extra: `"isGateway":true,`, dataDir: t.TempDir()}
	c := n.container("b1")
	n.add(c, b)
	release, err := nodelock.Acquire(n.plugin.nodeLock) // what network A's bridge setup holds
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := n.do("DEL", c, b)
		done <- err
	}()
	var delErr error
	finished := func() bool {
		select {
		case delErr = <-done:
			return true
		default:
			return false
		}
	}
	waits, err := testnet.WaitForLockWaiter(n.plugin.nodeLock, finished)
	if err != nil {
		t.Fatal(err)
	}
	if !waits {
		release()
		t.Fatalf("network B's last DEL (data directory %s) tore its bridge down while another network held the node lock (DEL: %v)", b.dataDir, delErr)
	}
	if st, err := nat.ReadBridge(b.bridge); err != nil || !st.Ready {
		t.Errorf("bridge %s's setup went while the node lock was held: %+v %v", b.bridge, st, err)
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if st, err := nat.ReadBridge(b.bridge); err != nil || st.Ready {
		t.Errorf("after the lock was free, bridge %s kept its setup: %+v %v", b.bridge, st, err)
	}
}

// TestConcurrentFirstADDsSetUpOnce: ADDs started at once on a bridge
// without its setup (every ADD of a burst after the bridge emptied) used
// to redo the whole setup one after the other under the node lock — the
// host's filters scanned and opened, Pier's base chains flushed and
// refilled, each setup's deletions making its socket's close wait a grace
// period. Now each looks again once it has the lock, and only the first
// sets the bridge up. The test holds the node lock until every ADD waits
// for it, so all of them found the marker missing.
func TestConcurrentFirstADDsSetUpOnce(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	logFile := filepath.Join(t.TempDir(), "pier.log")
	c := netConf{name: "burst", bridge: "pt-burst", subnet: "10.42.0.0/24",
		extra: fmt.Sprintf(`"isGateway":true,"ipMasq":true,"logFile":%q,`, logFile)}
	warm := n.container("warm")
	n.add(warm, c)
	if _, err := n.do("DEL", warm, c); err != nil { // the bridge's last container: its setup goes
		t.Fatal(err)
	}
	if err := os.Truncate(logFile, 0); err != nil { // the warm-up's setup is not counted
		t.Fatal(err)
	}
	release, err := nodelock.Acquire(n.plugin.nodeLock)
	if err != nil {
		t.Fatal(err)
	}
	const k = 4
	errs := make(chan error, k)
	for i := range k {
		a := n.container(fmt.Sprintf("b%d", i))
		go func() { _, err := n.do("ADD", a, c); errs <- err }()
	}
	waits, err := testnet.WaitForLockWaiters(n.plugin.nodeLock, k, func() bool { return len(errs) > 0 })
	release()
	if err != nil || !waits {
		t.Fatalf("the ADDs did not all wait for the node lock (%v); one finished: %v", err, <-errs)
	}
	for range k {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if setups := strings.Count(string(log), `msg="bridge set up"`); setups != 1 {
		t.Errorf("%d ADDs at once on a bridge without its setup set it up %d times, want once:\n%s", k, setups, log)
	}
	if st, err := nat.ReadBridge(c.bridge); err != nil || !st.Ready {
		t.Errorf("bridge %s after the ADDs: %+v %v", c.bridge, st, err)
	}
}
