package nodestate

import (
	"context"
	"log/slog"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestWatcherResyncs: a registered resync runs on the watcher's first
// pass (nothing is known to be in place yet) and after a flush of the
// ruleset, not on passes where Pier's table is as the watcher left it.
func TestWatcherResyncs(t *testing.T) {
	node := testnet.New(t).Node
	w := &Watcher{Roots: []string{t.TempDir()}, Log: slog.New(slog.DiscardHandler)}
	calls := 0
	w.Register("test", func(context.Context) error { calls++; return nil })
	pass := func() {
		t.Helper()
		if err := node.Do(func() error { return w.Pass(context.Background()) }); err != nil {
			t.Fatal(err)
		}
	}
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
