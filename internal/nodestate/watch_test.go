package nodestate

import (
	"context"
	"log/slog"
	"strings"
	"testing"

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
