package cluster

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pier-cni/pier/internal/routing"
)

func putEvent(t *testing.T, key string, b any) *clientv3.Event {
	t.Helper()
	val, ok := b.([]byte)
	if !ok {
		var err error
		if val, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	return &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: val}}
}

// TestAgentUnreadableBlocks guards that a block the route agent cannot
// parse (a malformed key, a value that is not a block, a value whose CIDR
// is not its key's) is logged and counted, not skipped in silence, and
// that the readable blocks of the same events are still routed.
func TestAgentUnreadableBlocks(t *testing.T) {
	var logs bytes.Buffer
	g := &Agent{Cfg: Config{Mode: ModeHostGW}, Node: "n1", NodeIP: netip.MustParseAddr("192.0.2.1"),
		Log: slog.New(slog.NewTextHandler(&logs, nil))}
	good := &Block{CIDR: netip.MustParsePrefix("10.244.0.64/26"), Node: "n2", NodeIP: netip.MustParseAddr("192.0.2.2")}
	other := &Block{CIDR: netip.MustParsePrefix("10.244.0.192/26"), Node: "n3", NodeIP: netip.MustParseAddr("192.0.2.3")}
	blocks := map[netip.Prefix]*Block{}
	changed := g.apply([]*clientv3.Event{
		putEvent(t, BlockKey(good.CIDR), good),
		putEvent(t, blocksPrefix+"not-a-prefix", good),
		putEvent(t, BlockKey(netip.MustParsePrefix("10.244.0.128/26")), []byte("{not json")),
		putEvent(t, BlockKey(netip.MustParsePrefix("10.244.1.0/26")), other), // value of another block
		{Type: clientv3.EventTypeDelete, Kv: &mvccpb.KeyValue{Key: []byte(blocksPrefix + "garbage")}},
	}, blocks)
	if !changed || len(blocks) != 1 || blocks[good.CIDR] == nil {
		t.Fatalf("changed %v, blocks %v", changed, blocks)
	}
	if n := g.Unreadable(); n != 4 {
		t.Fatalf("counted %d unreadable blocks, want 4\n%s", n, logs.String())
	}
	if c := strings.Count(logs.String(), "cannot parse"); c != 4 {
		t.Fatalf("logged %d unreadable blocks, want 4:\n%s", c, logs.String())
	}
	s := g.plan(blocks)
	if len(s.Routes) != 1 || s.Routes[0] != (routing.Route{Dst: good.CIDR, Via: good.NodeIP}) {
		t.Fatalf("plan: %+v", s)
	}
}

// TestAgentPlan: the blocks → routes translation of cluster mode: own
// blocks and blocks of the node's own IPs are not routed; IPv6 blocks go
// via the node's IPv6 address in host-gw and are not routed in vxlan mode;
// vxlan has one peer per node, keyed by its IP.
func TestAgentPlan(t *testing.T) {
	n2, n26 := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("fd00::2")
	blocks := map[netip.Prefix]*Block{
		netip.MustParsePrefix("10.244.0.0/26"):   {Node: "n1", NodeIP: netip.MustParseAddr("192.0.2.1")},
		netip.MustParsePrefix("10.244.0.64/26"):  {Node: "n2", NodeIP: n2},
		netip.MustParsePrefix("10.244.0.128/26"): {Node: "n2", NodeIP: n2},
		netip.MustParsePrefix("fd00:1::/122"):    {Node: "n2", NodeIP: n26},
		netip.MustParsePrefix("fd00:1::40/122"):  {Node: "n3", NodeIP: netip.MustParseAddr("192.0.2.3")}, // no IPv6 next hop
	}
	g := &Agent{Cfg: Config{Mode: ModeHostGW}, Node: "n1", NodeIP: netip.MustParseAddr("192.0.2.1"), Log: slog.New(slog.DiscardHandler)}
	s := g.plan(blocks)
	if len(s.Routes) != 3 || len(s.Peers) != 0 || s.Routes[2] != (routing.Route{Dst: netip.MustParsePrefix("fd00:1::/122"), Via: n26}) {
		t.Fatalf("host-gw plan: %+v", s)
	}
	g.Cfg.Mode = ModeVXLAN
	s = g.plan(blocks)
	if len(s.Routes) != 2 || len(s.Peers) != 1 || s.Peers[0].Underlay != n2 || s.Peers[0].NextHops[0] != n2 {
		t.Fatalf("vxlan plan: %+v", s)
	}
}
