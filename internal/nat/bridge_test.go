package nat

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestBridgeMarker: an attachment on a bridge without its marker is added
// in full and reports the marker missing — through the slow path on a
// fresh node, through the fast batch where the network's objects exist;
// SetupBridge sets it, after which Add is a fast, complete batch; a flush
// brings the slow path back, RemoveBridge the report.
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
	add(Outcome{BridgeMissing: true}) // still no marker, but the maps are there
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
	add(Outcome{BridgeMissing: true})
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

// TestFirstAddOnBridgeAddsOnly guards the cost of a bridge's first
// container where the node's objects exist (every container after the
// bridge emptied): its batch used to fail on the missing marker, and the
// kernel's abort of a failed transaction waits a grace period; then
// SetupBridge flushed and refilled the base chains and deleted and
// re-added the marker, whose deletions made the close of its socket wait
// another. Now Add looks the marker up and adds the elements in one batch,
// and SetupBridge's one transaction only adds the marker: nothing is
// deleted or replaced, so nothing is left for the kernel to release.
func TestFirstAddOnBridgeAddsOnly(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	a := Attachment{Network: bridgeNet, Owner: "x/eth0", Masq: addrs("10.15.20.2"), GuardGroup: testGroup, Bridge: "br0"}
	if _, err := Add(a, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if err := SetupBridge(BridgeSetup{Bridge: "br0", Note: "n"}, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if err := RemoveBridge("br0", InNetNS(fd)); err != nil { // the last container left
		t.Fatal(err)
	}
	a.Owner, a.Masq = "y/eth0", addrs("10.15.20.3")
	var out Outcome
	txs := transactions(t, fd, func() {
		var err error
		if out, err = Add(a, InNetNS(fd)); err != nil {
			t.Fatal(err)
		}
	})
	if out != (Outcome{BridgeMissing: true}) {
		t.Errorf("Add on a bridge without its marker: %+v, want the marker reported missing without the slow path", out)
	}
	if want := [][]string{{"add element"}}; !slices.EqualFunc(txs, want, slices.Equal) {
		t.Errorf("Add's transactions: %v, want %v", txs, want)
	}
	txs = transactions(t, fd, func() {
		if err := SetupBridge(BridgeSetup{Bridge: "br0", Note: "n"}, InNetNS(fd)); err != nil {
			t.Fatal(err)
		}
	})
	if want := [][]string{{"add set", "add element"}}; !slices.EqualFunc(txs, want, slices.Equal) {
		t.Errorf("SetupBridge's transactions: %v, want %v (the marker only)", txs, want)
	}
	if txs := transactions(t, fd, func() {
		if err := SetupBridge(BridgeSetup{Bridge: "br0", Note: "n"}, InNetNS(fd)); err != nil {
			t.Fatal(err)
		}
	}); len(txs) != 0 {
		t.Errorf("SetupBridge of a bridge set up already: %v, want no transaction", txs)
	}
}

// TestSetupBridgeRepairs: what SetupBridge finds wrong in the base chains
// — a rule added by someone else, a chain emptied, a chain deleted — it
// rewrites, leaving each chain with exactly its rules; and a note that
// changed is written into the marker.
func TestSetupBridgeRepairs(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	setup := func(note string) {
		t.Helper()
		if err := SetupBridge(BridgeSetup{Bridge: "br0", Note: note}, InNetNS(fd)); err != nil {
			t.Fatal(err)
		}
	}
	setup("one")
	want := node.MustRun(t, "nft", "list", "table", "inet", "pier")
	for _, damage := range []string{
		"add rule inet pier localnet counter",
		"insert rule inet pier forward counter",
		"flush chain inet pier localnet",
		"delete chain inet pier forward",
	} {
		node.MustRun(t, append([]string{"nft"}, strings.Fields(damage)...)...)
		setup("one")
		if got := node.MustRun(t, "nft", "list", "table", "inet", "pier"); got != want {
			t.Errorf("after nft %s and SetupBridge:\n%s\nwant:\n%s", damage, got, want)
		}
	}
	setup("two")
	if st, err := ReadBridge("br0", InNetNS(fd)); err != nil || st.Note != "two" || !st.Ready {
		t.Errorf("the marker after a setup with another note: %+v, %v", st, err)
	}
}

// transactions runs f and returns the nftables transactions committed in
// the namespace meanwhile, each as the kinds of its changes ("add set",
// "delete rule", …). It ends its watch with a transaction of its own (a
// table it adds), whose arrival says every earlier one has arrived.
func transactions(t *testing.T, fd int, f func()) [][]string {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	mon := nftables.NewMonitor()
	events, err := conn.AddGenerationalMonitor(mon)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mon.Close() }()
	f()
	end := &nftables.Table{Name: testnet.UniqueName("end-"), Family: nftables.TableFamilyINet}
	conn.AddTable(end)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	var txs [][]string
	for gen := range events {
		var kinds []string
		for _, c := range gen.Changes {
			if tb, ok := c.Data.(*nftables.Table); ok && tb.Name == end.Name {
				return txs
			}
			kinds = append(kinds, changeKind(c.Type))
		}
		txs = append(txs, kinds)
	}
	t.Fatal("the nftables monitor stopped")
	return nil
}

func changeKind(typ nftables.MonitorEventType) string {
	switch typ {
	case nftables.MonitorEventTypeNewTable:
		return "add table"
	case nftables.MonitorEventTypeDelTable:
		return "delete table"
	case nftables.MonitorEventTypeNewChain:
		return "add chain"
	case nftables.MonitorEventTypeDelChain:
		return "delete chain"
	case nftables.MonitorEventTypeNewRule:
		return "add rule"
	case nftables.MonitorEventTypeDelRule:
		return "delete rule"
	case nftables.MonitorEventTypeNewSet:
		return "add set"
	case nftables.MonitorEventTypeDelSet:
		return "delete set"
	case nftables.MonitorEventTypeNewSetElem:
		return "add element"
	case nftables.MonitorEventTypeDelSetElem:
		return "delete element"
	}
	return fmt.Sprint("change ", int(typ))
}
