package nat

import (
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestBridgeMarker: an attachment on a bridge without its marker is added
// in full and reports the marker missing; SetupBridge sets it, after which
// Add is a fast, complete batch; a flush or RemoveBridge brings the slow
// path back.
func TestBridgeMarker(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	a := Attachment{Network: bridgeNet, Owner: "x/eth0", Masq: addrs("10.15.20.2"), GuardGroup: testGroup, Bridge: "br0"}
	add := func(want Outcome) {
		t.Helper()
		got, err := Add(a, InNetNS(fd))
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("Add: %+v, want %+v", got, want)
		}
	}
	add(Outcome{Rebuilt: true, BridgeMissing: true})
	add(Outcome{Rebuilt: true, BridgeMissing: true}) // still no marker
	if err := SetupBridge(BridgeSetup{Bridge: "br0", Note: "host filters: none drop"}, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	add(Outcome{})
	st, err := ReadBridge("br0", InNetNS(fd))
	if err != nil || !st.Ready || st.Note != "host filters: none drop" || st.Isolated {
		t.Fatalf("ReadBridge: %+v, %v", st, err)
	}
	ready, err := ReadyBridges(InNetNS(fd))
	if err != nil || !ready["br0"] || len(ready) != 1 {
		t.Fatalf("ReadyBridges: %v, %v", ready, err)
	}

	node.MustRun(t, "nft", "flush", "ruleset")
	add(Outcome{Rebuilt: true, BridgeMissing: true})
	rs := node.MustRun(t, "nft", "list", "table", "inet", "pier")
	for _, want := range []string{`iifname != "lo" ip daddr 127.0.0.0/8 drop`, "10.15.20.2", "chain forward"} {
		if !strings.Contains(rs, want) {
			t.Errorf("after a flush, the slow path left out %q:\n%s", want, rs)
		}
	}
	if err := SetupBridge(BridgeSetup{Bridge: "br0", Isolated: true}, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	add(Outcome{})
	if st, err := ReadBridge("br0", InNetNS(fd)); err != nil || !st.Isolated {
		t.Fatalf("isolation not recorded: %+v %v", st, err)
	}
	// Setting up again without isolation removes it.
	if err := SetupBridge(BridgeSetup{Bridge: "br0"}, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if st, err := ReadBridge("br0", InNetNS(fd)); err != nil || st.Isolated || !st.Ready {
		t.Fatalf("isolation not removed: %+v %v", st, err)
	}
	for range 2 { // what is gone already is no error
		if err := RemoveBridge("br0", InNetNS(fd)); err != nil {
			t.Fatal(err)
		}
	}
	add(Outcome{Rebuilt: true, BridgeMissing: true})
	// An isolated bridge's removal takes its isolation too.
	if err := SetupBridge(BridgeSetup{Bridge: "br0", Isolated: true}, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if err := RemoveBridge("br0", InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if st, err := ReadBridge("br0", InNetNS(fd)); err != nil || st.Isolated || st.Ready {
		t.Fatalf("after RemoveBridge of an isolated bridge: %+v %v", st, err)
	}
}

// TestMarkerNames: a bridge name that is no nft identifier gets a hashed
// marker name, and no marker name can be a network's object name.
func TestMarkerNames(t *testing.T) {
	for _, tc := range []struct{ bridge, want string }{
		{"pier0", "pier0.bridge"},
		{"cni_bridge0", "cni_bridge0.bridge"},
		{"0br", "br"},
		{"br@x", "br"},
	} {
		got := markerName(tc.bridge)
		if !strings.HasPrefix(got, tc.want) || !strings.HasSuffix(got, markerSuffix) {
			t.Errorf("markerName(%q) = %q, want %q…%s", tc.bridge, got, tc.want, markerSuffix)
		}
	}
	o := objectNames("x")
	for _, name := range []string{o.chain, o.set4, o.set6} {
		if strings.HasSuffix(name, markerSuffix) {
			t.Errorf("network object %q looks like a marker", name)
		}
	}
}
