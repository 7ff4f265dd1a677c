package nodestate

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestWatcherRestoresAfterTableFlush guards pierd's watcher against
// `nft flush table inet pier`, which removes every rule of Pier's table
// but keeps its sets: the sentinel set and the bridges' markers stay, so
// a watcher that looks only for them finds nothing amiss, and the
// masquerade and DNAT rules, the localnet drop (CVE-2020-8558, on a bridge
// that keeps route_localnet=1) and the network policy base chains' rules
// stay gone. The plugin's fast path does not notice either: its batch only
// adds elements to sets that still exist.
func TestWatcherRestoresAfterTableFlush(t *testing.T) {
	node := testnet.New(t).Node
	r := testRecord("c1/eth0")
	r.Spoof, r.Firewall = nil, false
	node.MustRun(t, "ip", "link", "add", r.HostVeth, "type", "veth", "peer", "name", "pt-peer0")
	root := t.TempDir()
	var err error
	if r.Boot, err = BootID(); err != nil {
		t.Fatal(err)
	}
	if err := WriteRecord(root, r); err != nil {
		t.Fatal(err)
	}
	w := &Watcher{Roots: []string{root}, Lock: filepath.Join(t.TempDir(), "node.lock"), Log: slog.New(slog.DiscardHandler)}
	pass := func() {
		t.Helper()
		if err := node.Do(func() error { return w.Pass(context.Background()) }); err != nil {
			t.Fatal(err)
		}
	}
	rulesOK := func(when string) {
		t.Helper()
		rs := node.MustRun(t, "nft", "list", "table", "inet", "pier")
		for _, want := range []string{"ip daddr 127.0.0.0/8 drop", "dnat", "masquerade comment"} {
			if !strings.Contains(rs, want) {
				t.Errorf("%s: table inet pier lacks %q:\n%s", when, want, rs)
			}
		}
	}
	pass() // the first pass restores the record into an empty node
	rulesOK("after the first pass")
	node.MustRun(t, "nft", "flush", "table", "inet", "pier")
	pass()
	rulesOK("after nft flush table inet pier and a pass")
}
