package nodestate

import (
	"path/filepath"
	"testing"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

// TestTeardownBridgeLeaving: the port of the attachment whose DEL runs
// the teardown (leaving) does not count, so its bridge is torn down while
// that veth is still being deleted; any other Pier port keeps the setup;
// GC's teardown (no leaving) counts every Pier port. It runs in a child
// process wholly inside the node namespace (InNode): the teardown removes
// the host's accepts on a goroutine of its own, which a thread switched
// into the namespace would not cover.
func TestTeardownBridgeLeaving(t *testing.T) {
	sb := testnet.New(t)
	if !sb.InNode(t) {
		return
	}
	c := sb.Container()
	lock := filepath.Join(t.TempDir(), "node.lock")
	spec := BridgeSpec{Bridge: "br-td"}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	br, _, err := bridge.Ensure(bridge.Config{Name: spec.Bridge})
	must(err)
	for _, name := range []string{"vleaving", "vstaying"} {
		_, err := veth.Create(veth.Config{ContainerNetNS: c.Path, IfName: "e" + name, HostName: name, Bridge: br, Alias: "pier:n:" + name + ":eth0"})
		must(err)
	}
	_, err = SetupBridge(lock, spec)
	must(err)
	teardown := func(leaving string) (gone, ready bool) {
		t.Helper()
		gone, err := TeardownBridge(lock, spec, leaving)
		must(err)
		st, err := nat.ReadBridge(spec.Bridge)
		must(err)
		return gone, st.Ready
	}
	if gone, ready := teardown("vleaving"); gone || !ready {
		t.Fatalf("with another Pier port: torn down %v, setup kept %v", gone, ready)
	}
	must(veth.DeleteHostEnd("vstaying"))
	if gone, ready := teardown(""); gone || !ready {
		t.Fatalf("GC's teardown with a Pier port left: torn down %v, setup kept %v", gone, ready)
	}
	if gone, ready := teardown("vleaving"); !gone || ready {
		t.Fatalf("with only the leaving port: torn down %v, setup kept %v", gone, ready)
	}
}
