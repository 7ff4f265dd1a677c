package e2e

// Cluster mode: the route agent's watch after an etcd compaction, and a
// node whose lease lapses (see cluster_test.go for the sandbox).

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/pier-cni/pier/internal/cluster"
)

// etcdClient is an etcd client for the test itself: its connections are
// made inside the underlay namespace (etcd is not reachable from the host).
func (c *clusterEnv) etcdClient() *clientv3.Client {
	t := c.t
	t.Helper()
	if c.tlsDir != "" {
		t.Fatal("etcdClient: plain-text clusters only")
	}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "unix://")
		var conn net.Conn
		err := c.underlay.Do(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.url()}, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop(), DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// etcdBlocks reads every block: prefix → node name and node IP.
func etcdBlocks(t *testing.T, cli *clientv3.Client) map[netip.Prefix]cluster.Block {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/pier/blocks/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]cluster.Block{}
	for _, kv := range resp.Kvs {
		var b cluster.Block
		if err := json.Unmarshal(kv.Value, &b); err != nil {
			t.Fatalf("block %s: %v", kv.Key, err)
		}
		out[b.CIDR] = b
	}
	return out
}

// agentRoutes is the node's routes of the agent: "prefix via ip" lines.
func (n *clusterNode) agentRoutes() []string {
	out, _ := n.sb.Node.Run("ip", "route", "show", "proto", "80")
	out6, _ := n.sb.Node.Run("ip", "-6", "route", "show", "proto", "80")
	out += "\n" + out6
	var rs []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == "via" {
			rs = append(rs, f[0]+" via "+f[2])
		}
	}
	sort.Strings(rs)
	return rs
}

// wantRoutes is what n's agent should route given the blocks in etcd.
func wantRoutes(n *clusterNode, blocks map[netip.Prefix]cluster.Block) []string {
	var rs []string
	for p, b := range blocks {
		if b.Node != n.name {
			rs = append(rs, p.String()+" via "+b.NodeIP.String())
		}
	}
	sort.Strings(rs)
	return rs
}

// waitRoutesConverge waits until every node routes exactly the other
// nodes' blocks in etcd.
func waitRoutesConverge(t *testing.T, c *clusterEnv, cli *clientv3.Client, limit time.Duration) {
	t.Helper()
	end := time.Now().Add(limit)
	for {
		blocks := etcdBlocks(t, cli)
		bad := ""
		for _, n := range c.nodes {
			if got, want := n.agentRoutes(), wantRoutes(n, blocks); strings.Join(got, ",") != strings.Join(want, ",") {
				bad += fmt.Sprintf("\n%s routes %v, want %v", n.name, got, want)
			}
		}
		if bad == "" {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("routes did not converge in %v:%s", limit, bad)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterWatchCompacted: node3 is cut off from etcd; meanwhile a node
// joins, node1 claims a second block, and etcd is compacted past node3's
// watch revision. When node3 reaches etcd again its watch cannot resume
// (revision compacted): the agent must re-read and route the new blocks.
func TestClusterWatchCompacted(t *testing.T) {
	c := newCluster(t, 3, "host-gw")
	cli := c.etcdClient()
	for _, n := range c.nodes {
		n.add(n.name+"-c0", clusterConf(n.socket, 1500))
	}
	waitRoutesConverge(t, c, cli, 10*time.Second)

	// Cut node3 off etcd: reset its connections and refuse new ones.
	behind := c.nodes[2]
	rule := []string{"OUTPUT", "-p", "tcp", "-d", etcdIP, "--dport", "2379", "-j", "REJECT", "--reject-with", "tcp-reset"}
	behind.sb.Node.MustRun(t, append([]string{"iptables", "-w", "-I"}, rule...)...)
	cut := true
	unblock := func() {
		if cut {
			behind.sb.Node.MustRun(t, append([]string{"iptables", "-w", "-D"}, rule...)...)
			cut = false
		}
	}
	t.Cleanup(unblock) // the namespace goes anyway; this keeps the log honest
	// Existing connections: kill them (ss -K) or wait for their next
	// packet (gRPC keepalive, 5 s) to be answered by a reset.
	_, _ = behind.sb.Node.Run("ss", "-K", "dst", etcdIP, "dport", "=", "2379")
	waitUntil(t, 15*time.Second, func() bool {
		out, _ := behind.sb.Node.Run("ss", "-Htn", "state", "established", "dst", etcdIP)
		return strings.TrimSpace(out) == ""
	})

	// Changes node3 misses: a new node with a container, node1 fills its
	// first block and claims another.
	n4 := c.addNode(4)
	n4.add("node4-c0", clusterConf(n4.socket, 1500))
	before := len(etcdBlocks(t, cli))
	allocateMany(t, c.nodes[:1], "fill", 70)
	blocks := etcdBlocks(t, cli)
	if len(blocks) < before+1 {
		t.Fatalf("node1 claimed no new block: %d blocks, had %d", len(blocks), before)
	}
	// Compact everything up to now: node3's watch revision is gone.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	g, err := cli.Get(ctx, "/pier/config")
	if err == nil {
		_, err = cli.Compact(ctx, g.Header.Revision, clientv3.WithCompactPhysical())
	}
	cancel()
	if err != nil {
		t.Fatalf("compact: %v", err)
	}
	if got, want := behind.agentRoutes(), wantRoutes(behind, blocks); strings.Join(got, ",") == strings.Join(want, ",") {
		t.Fatalf("node3 already routes the new blocks while cut off: %v", got)
	}

	unblock()
	start := time.Now()
	waitRoutesConverge(t, c, cli, 30*time.Second)
	t.Logf("MEASURE watch compacted: node3 converged %v after reaching etcd again", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(behind.stderr.String(), "compacted") {
		t.Errorf("node3's agent did not see the compaction (resynced another way?):\n%s", behind.stderr)
	}
	// And traffic flows: node3's container reaches node4's and node1's new block.
	cs := []clusterContainer{behind.add("node3-c1", clusterConf(behind.socket, 1500)), n4.add("node4-c1", clusterConf(n4.socket, 1500))}
	pingAll(t, cs)
}

// TestClusterLeaseLapse: with a 2 s node lease, node3's pierd is paused
// (SIGSTOP: a hung or partitioned node) until its lease lapses. The other
// nodes keep allocating but never in node3's blocks; resumed, node3
// registers again and keeps its blocks and addresses; killed and
// restarted after another lapse, it still allocates in its own blocks.
func TestClusterLeaseLapse(t *testing.T) {
	c := newCluster(t, 0, "host-gw")
	c.pierdArgs = []string{"--node-ttl", "2s"}
	for i := range 3 {
		c.addNode(i + 1)
	}
	cli := c.etcdClient()
	n3 := c.nodes[2]
	first, _ := allocateMany(t, []*clusterNode{n3}, "pre", 70)
	all := map[netip.Addr]string{}
	for _, a := range first[n3] {
		all[a] = n3.name
	}
	own := func() map[netip.Prefix]bool {
		m := map[netip.Prefix]bool{}
		for p, b := range etcdBlocks(t, cli) {
			if b.Node == n3.name {
				m[p] = true
			}
		}
		return m
	}
	held := own()
	if len(held) != 2 {
		t.Fatalf("node3 holds %d blocks after 70 allocations, want 2", len(held))
	}
	nodeKey := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := cli.Get(ctx, "/pier/nodes/"+n3.name)
		return err == nil && len(r.Kvs) == 1
	}
	if !nodeKey() {
		t.Fatal("node3 is not registered")
	}

	if err := n3.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitUntil(t, 10*time.Second, func() bool { return !nodeKey() })
	t.Logf("MEASURE lease lapse: node key gone %v after SIGSTOP (TTL 2 s)", time.Since(stopped).Round(time.Millisecond))

	check := func(got map[*clusterNode][]netip.Addr, _ time.Duration) {
		t.Helper()
		for n, addrs := range got {
			for _, a := range addrs {
				if n != n3 && held[netip.PrefixFrom(a, 26).Masked()] {
					t.Fatalf("%s got %s from lapsed node3's block", n.name, a)
				}
				if prev, dup := all[a]; dup {
					t.Fatalf("%s handed out twice (%s and %s)", a, prev, n.name)
				}
				all[a] = n.name
			}
		}
	}
	check(allocateMany(t, c.nodes[:2], "lapsed", 100))

	if err := n3.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, nodeKey)
	// 60 more: 52 fit in its second block, 8 need a claim (with the new lease).
	back, d := allocateMany(t, []*clusterNode{n3}, "back", 60)
	check(back, d)
	inOld := 0
	for _, a := range back[n3] {
		if held[netip.PrefixFrom(a, 26).Masked()] {
			inOld++
		}
	}
	if inOld != 52 {
		t.Errorf("resumed node3 put %d of 60 addresses in its old blocks, want 52", inOld)
	}
	now := own()
	for p := range held {
		if !now[p] {
			t.Fatalf("node3 lost block %s", p)
		}
	}
	if len(now) != 3 {
		t.Fatalf("node3 holds %d blocks, want 3", len(now))
	}

	// Killed, lease lapsed, restarted: same blocks, next address in them.
	n3.kill()
	waitUntil(t, 10*time.Second, func() bool { return !nodeKey() })
	check(allocateMany(t, c.nodes[:2], "dead", 20))
	n3.start()
	again, d := allocateMany(t, []*clusterNode{n3}, "again", 1)
	check(again, d)
	if a := again[n3][0]; !now[netip.PrefixFrom(a, 26).Masked()] {
		t.Fatalf("restarted node3 allocated %s outside its blocks %v", a, now)
	}
	if l := clusterLeases(t, c.nodes[0]); len(l) != len(all) {
		t.Fatalf("cluster lists %d leases, want %d", len(l), len(all))
	}
	waitRoutesConverge(t, c, cli, 10*time.Second)
}
