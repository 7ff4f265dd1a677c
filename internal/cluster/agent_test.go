package cluster

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/routing"
	"github.com/pier-cni/pier/internal/testnet"
)

// syncBuffer is a log sink safe for the agent's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agentRoutes returns the node's routes of the route agent: block → via.
func agentRoutes(t *testing.T) map[netip.Prefix]netip.Addr {
	t.Helper()
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routing.Protocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]netip.Addr{}
	for _, r := range routes {
		p, _ := netip.ParsePrefix(r.Dst.String())
		gw, _ := netip.AddrFromSlice(r.Gw)
		out[p] = gw.Unmap()
	}
	return out
}

// TestAgentResyncsAfterCompaction: a node cut off from etcd while the
// cluster changes and etcd compacts its history cannot resume its watch
// where it stopped; its route agent reads everything again and routes the
// blocks claimed meanwhile. Runs in a node namespace of its own (routes
// are the kernel's), with etcd in the test process.
func TestAgentResyncsAfterCompaction(t *testing.T) {
	sb := testnet.New(t)
	if !sb.InNode(t) {
		return
	}
	mustIP(t, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
	mustIP(t, "link", "set", "ul1", "up")
	mustIP(t, "addr", "add", "192.0.2.1/24", "dev", "ul0")
	mustIP(t, "link", "set", "ul0", "up")
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	logs := &syncBuffer{}
	o := Options{Etcd: EtcdOptions{Endpoints: []string{"unix://" + te.proxy.path}}, NodeName: "n1",
		NodeIP: netip.MustParseAddr("192.0.2.1"), DataDir: t.TempDir(), Log: slog.New(slog.NewTextHandler(logs, nil))}
	n1, err := Start(o, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer n1.Close()
	n2 := startDirect(t, te, "n2") // 192.0.2.2
	conf := netConf(t, "net", testCIDR)
	first := netip.PrefixFrom(allocate(t, n2, conf, "first"), 28).Masked()
	waitFor(t, "n1 to route n2's first block", func() bool { return agentRoutes(t)[first] == netip.MustParseAddr("192.0.2.2") })

	te.proxy.down()
	var later netip.Prefix
	for i := range 14 { // fills the first block: the last one claims a new block
		later = netip.PrefixFrom(allocate(t, n2, conf, fmt.Sprint("later", i)), 28).Masked()
	}
	if later == first {
		t.Fatal("n2 claimed no new block")
	}
	resp, err := cli.Get(ctxT(t), configKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctxT(t), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	te.proxy.up(t)
	waitFor(t, "n1 to route n2's later block", func() bool { return agentRoutes(t)[later] == netip.MustParseAddr("192.0.2.2") })
	if !strings.Contains(logs.String(), "compacted") {
		t.Errorf("n1 routed the new block, but not after seeing its watch compacted:\n%s", logs)
	}
}

func mustIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := execIP(args...); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
