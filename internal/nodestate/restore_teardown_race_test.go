package nodestate

import (
	"log/slog"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodelock"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

// TestRestoreDoesNotSetUpABridgeItsLastDELEmptied guards a restore (pierd's
// after a flush; an ADD's slow path; CHECK, GC) racing the DEL of a
// bridge's last container. Restore reads the network's records, finds the
// container's veth still there and its bridge's marker gone (the flush),
// and waits for the node lock to set the bridge up; meanwhile the DEL
// removes the record and the veth and, holding the node lock, tears the
// bridge's setup down, finding no Pier port left. When the restore then
// gets the lock it sets the bridge up anyway: the marker (and with
// Firewall, the host's accepts for the bridge) stay on a bridge with no
// container of Pier's, until some later GC. Fails on main: SetupBridge
// does not look again, under the lock, whether the bridge still has a
// Pier port.
func TestRestoreDoesNotSetUpABridgeItsLastDELEmptied(t *testing.T) {
	sb := testnet.New(t)
	if !sb.InNode(t) {
		return
	}
	c := sb.Container()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	lock := filepath.Join(t.TempDir(), "node.lock")
	root := t.TempDir()
	r := testRecord("c1/eth0")
	r.Bridge, r.HostVeth, r.Spoof, r.Firewall = "br-rr", "vlast", nil, false
	var err error
	r.Boot, err = BootID()
	must(err)
	br, _, err := bridge.Ensure(bridge.Config{Name: r.Bridge})
	must(err)
	_, err = veth.Create(veth.Config{ContainerNetNS: c.Path, IfName: "eth0", HostName: r.HostVeth, Bridge: br, Alias: "pier:net1:c1:eth0"})
	must(err)
	must(WriteRecord(root, r))
	_, err = SetupBridge(lock, r.Spec())
	must(err)
	if out, err := exec.Command("nft", "flush", "ruleset").CombinedOutput(); err != nil {
		t.Fatalf("nft flush ruleset: %v %s", err, out)
	}

	// The DEL's teardown holds the node lock when the restore asks for it.
	release, err := nodelock.Acquire(lock)
	must(err)
	done := make(chan error, 1)
	go func() {
		_, err := Restore(Paths{Root: root, Lock: lock}, "net1", false, slog.New(slog.DiscardHandler))
		done <- err
	}()
	finished := func() bool { return len(done) > 0 }
	waits, err := testnet.WaitForLockWaiter(lock, finished)
	must(err)
	if !waits {
		release()
		t.Fatalf("the restore did not wait to set the bridge up (%v): the race is not reproduced", <-done)
	}
	// The DEL of the bridge's last container: its record, its veth, and
	// (no Pier port left) the bridge's setup.
	must(RemoveRecord(root, "net1", r.Owner, func() error { return nil }))
	must(veth.DeleteHostEnd(r.HostVeth))
	if used, err := pierPorts(r.Bridge, ""); err != nil || used {
		t.Fatalf("a Pier port is left on the bridge (%v): the DEL would not tear down", err)
	}
	must(removeSetup(r.Spec(), nil))
	release()
	if err := <-done; err != nil {
		t.Logf("restore: %v", err)
	}

	st, err := nat.ReadBridge(r.Bridge)
	must(err)
	if st.Ready {
		t.Fatalf("bridge %s has no container of Pier's left, but the restore that raced its last DEL set it up again (marker in place)", r.Bridge)
	}
}
