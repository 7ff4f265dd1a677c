package nodestate

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestWatcherResyncs: on a node where Pier has nothing in netfilter, a
// pass creates nothing (a pierd in a namespace without Pier's tables must
// leave its firewall alone). A registered resync runs on the first pass
// and after a flush of the ruleset, not on passes where Pier's table is as
// the watcher left it.
func TestWatcherResyncs(t *testing.T) {
	node := testnet.New(t).Node
	w := &Watcher{Roots: []string{t.TempDir()}, Log: slog.New(slog.DiscardHandler)}
	pass := func() {
		t.Helper()
		if err := node.Do(func() error { return w.Pass(context.Background()) }); err != nil {
			t.Fatal(err)
		}
	}
	pass()
	if tables := node.MustRun(t, "nft", "list", "tables"); strings.TrimSpace(tables) != "" {
		t.Fatalf("a pass on a node without Pier's state created %s", tables)
	}
	calls := 0
	w.Register("test", func(context.Context) error {
		calls++
		node.MustRun(t, "nft", "add", "table", "inet", "pier") // the feature's own state
		return nil
	})
	pass()
	pass()
	if calls != 1 {
		t.Fatalf("after two passes on a quiet node: %d resyncs, want 1", calls)
	}
	node.MustRun(t, "nft", "flush", "ruleset")
	pass()
	pass()
	if calls != 2 {
		t.Fatalf("after a flush: %d resyncs, want 2", calls)
	}
}

// TestWatcherLeavesUnrecordedChains: after `nft flush table inet pier`
// the watcher restores once; the masquerade chains of a network recorded
// under none of its roots stay empty (only that network's records know
// its subnets), and later passes, which pierd makes on every notification
// (its own restore makes some), must not restore and resync again and
// again for them.
func TestWatcherLeavesUnrecordedChains(t *testing.T) {
	node := testnet.New(t).Node
	w := &Watcher{Roots: []string{t.TempDir()}, Lock: filepath.Join(t.TempDir(), "node.lock"), Log: slog.New(slog.DiscardHandler)}
	resyncs := 0
	w.Register("count", func(context.Context) error { resyncs++; return nil })
	pass := func() {
		t.Helper()
		if err := node.Do(func() error { return w.Pass(context.Background()) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := node.Do(func() error {
		a := nat.Attachment{Network: nat.Network{Name: "elsewhere", Subnets: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}},
			Owner: "c9/eth0", Masq: []netip.Addr{netip.MustParseAddr("10.9.0.2")}, Bridge: "br9"}
		if _, err := nat.Add(a); err != nil {
			return err
		}
		return nat.SetupBridge(nat.BridgeSetup{Bridge: "br9"})
	}); err != nil {
		t.Fatal(err)
	}
	pass() // the first pass sets the sentinel and resyncs
	node.MustRun(t, "nft", "flush", "table", "inet", "pier")
	pass()
	if resyncs != 2 {
		t.Fatalf("after nft flush table: %d resyncs, want 2", resyncs)
	}
	if rs := node.MustRun(t, "nft", "list", "chain", "inet", "pier", "localnet"); !strings.Contains(rs, "127.0.0.0/8 drop") {
		t.Errorf("the shared chains were not refilled:\n%s", rs)
	}
	pass()
	pass()
	if resyncs != 2 {
		t.Errorf("passes over chains no record can refill resynced again: %d resyncs, want 2", resyncs)
	}
	node.MustRun(t, "nft", "flush", "chain", "inet", "pier", "localnet")
	pass()
	if resyncs != 3 {
		t.Errorf("after a chain that was refilled lost its rules again: %d resyncs, want 3", resyncs)
	}
}
