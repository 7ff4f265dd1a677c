package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipam"
)

// TestClusterAsAllocator runs cluster mode through the ipam.Allocator
// contract, with the codes every allocator gives.
func TestClusterAsAllocator(t *testing.T) {
	te := startEtcd(t)
	te.initCluster(t, testCIDR)
	n := te.startNode(t, "n1", Options{})
	conf := netConf(t, "net", testCIDR)
	ctx := ctxT(t)

	res, err := ipam.AllocateResult(ctx, n, conf, owner("a"))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.IPs[0].Address.String(); got != "10.244.0.2/28" || res.IPs[0].Gateway.String() != "10.244.0.1" {
		t.Fatalf("first address %s via %s, want 10.244.0.2/28 via the block's gateway 10.244.0.1", got, res.IPs[0].Gateway)
	}
	if again := allocate(t, n, conf, "a"); again.String() != "10.244.0.2" {
		t.Fatalf("repeated ADD got %s, want the same address", again)
	}
	if _, err := n.Check(ctx, conf, owner("nobody")); cnierr.CodeOf(err) != cnierr.UnknownContainer {
		t.Fatalf("Check of nobody: %v, want code 3", err)
	}
	_, err = n.Allocate(ctx, netConf(t, "net", testCIDR, "10.244.0.2"), owner("b"))
	if cnierr.CodeOf(err) != cnierr.AddressUnavailable || !strings.Contains(err.Error(), "held by container a") {
		t.Fatalf("requested address held by a: %v, want code 101 naming a", err)
	}
	if _, err := n.Allocate(ctx, netConf(t, "net", testCIDR, "10.9.0.1"), owner("b")); cnierr.CodeOf(err) != cnierr.AddressUnavailable {
		t.Fatalf("requested address outside the cluster: %v, want code 101", err)
	}
	if _, err := n.Allocate(ctx, netConf(t, "net", "10.9.0.0/16"), owner("b")); cnierr.CodeOf(err) != cnierr.InvalidConfig {
		t.Fatalf("a network outside the cluster CIDRs: %v, want code 7", err)
	}
	if _, err := n.Allocate(ctx, conf, ipam.Owner{ContainerID: "-bad", IfName: "eth0"}); cnierr.CodeOf(err) != cnierr.InvalidEnv {
		t.Fatalf("an owner that cannot be recorded: %v, want code 4", err)
	}
	allocate(t, n, netConf(t, "net", testCIDR, "10.244.0.9"), "b")
	allocate(t, n, netConf(t, "other", testCIDR), "c")

	list, err := n.List(ctx, conf)
	if err != nil || len(list) != 2 || list[0].Owner != owner("a") || list[1].Addr.String() != "10.244.0.9" || list[1].RangeSet != 0 {
		t.Fatalf("List = %+v, %v; want a's and b's, in address order", list, err)
	}
	if nets, err := n.Networks(ctx); err != nil || !slices.Equal(nets, []string{"net", "other"}) {
		t.Fatalf("Networks = %v, %v", nets, err)
	}
	if got, err := n.GC(ctx, conf, []ipam.Owner{owner("b")}); err != nil || got != 1 {
		t.Fatalf("GC keeping b released %d, %v; want a's one address", got, err)
	}
	if got, err := n.Release(ctx, conf, owner("b")); err != nil || got != 1 {
		t.Fatalf("Release(b) = %d, %v", got, err)
	}
	if got, err := n.Release(ctx, conf, owner("b")); err != nil || got != 0 {
		t.Fatalf("repeated Release(b) = %d, %v; want 0, nil", got, err)
	}
	if err := n.Status(ctx, conf); err != nil {
		t.Fatalf("Status: %v", err)
	}
	te.proxy.down()
	if err := n.Status(ctx, conf); cnierr.CodeOf(err) != cnierr.PluginNotAvailable {
		t.Fatalf("Status with etcd unreachable: %v, want code 50", err)
	}
	if _, err := n.List(ctx, conf); cnierr.CodeOf(err) != cnierr.TryAgainLater {
		t.Fatalf("List with etcd unreachable: %v, want code 11", err)
	}
}

// TestBlockClaimRace: two nodes allocating at once claim blocks side by
// side; each block has one node and no address is handed out twice.
func TestBlockClaimRace(t *testing.T) {
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	nodes := []*testNode{te.startNode(t, "n1", Options{}), te.startNode(t, "n2", Options{})}
	conf := netConf(t, "net", testCIDR)
	const each = 60 // about five /28 blocks per node
	got := make([][]netip.Addr, len(nodes))
	var mu sync.Mutex // guards got
	var wg sync.WaitGroup
	for i, n := range nodes {
		for j := range each {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				addrs, err := n.Allocate(ctx, conf, owner(fmt.Sprintf("%s-%d", n.name, j)))
				if err != nil {
					t.Errorf("%s: %v", n.name, err)
					return
				}
				mu.Lock()
				got[i] = append(got[i], addrs[0].Prefix.Addr())
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	held := holders(t, cli)
	if len(held) != len(nodes)*each {
		t.Fatalf("%d allocations in etcd, want %d", len(held), len(nodes)*each)
	}
	blocks := blocksOf(t, cli)
	for i, n := range nodes {
		for _, a := range got[i] {
			b, ok := blocks[netip.PrefixFrom(a, 28).Masked()]
			if !ok || b.Node != n.name {
				t.Errorf("%s got %s, in a block of %q", n.name, a, b.Node)
			}
		}
	}
}

// TestBlockClaimContention: two nodes that want new blocks at the same
// instant: every claim is create-if-absent, so each block gets one node.
func TestBlockClaimContention(t *testing.T) {
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	a, b := te.startNode(t, "n1", Options{}), te.startNode(t, "n2", Options{})
	conf := netConf(t, "net", testCIDR)
	var wg sync.WaitGroup
	for round := range 8 { // each round needs a new block on both nodes
		for _, n := range []*testNode{a, b} {
			wg.Go(func() {
				for j := range 13 {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					_, err := n.Allocate(ctx, conf, owner(fmt.Sprintf("%s-%d-%d", n.name, round, j)))
					cancel()
					if err != nil {
						t.Errorf("%s: %v", n.name, err)
					}
				}
			})
		}
		wg.Wait()
	}
	if held := holders(t, cli); len(held) != 2*8*13 {
		t.Fatalf("%d allocations, want %d", len(held), 2*8*13)
	}
	if bl := blocksOf(t, cli); len(bl) != 16 {
		t.Fatalf("%d blocks, want 16 full ones", len(bl))
	}
}

func blocksOf(t *testing.T, cli *clientv3.Client) map[netip.Prefix]*Block {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	all, _, err := ListBlocks(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]*Block{}
	for p, rb := range all {
		out[p] = rb.b
	}
	return out
}

// TestCommitConflictRereads: a block written behind the node's back (a
// second pierd under the same node name, an operator's tool) makes the
// node's compare-and-swap fail; it re-reads the blocks and allocates
// around what the other writer recorded.
func TestCommitConflictRereads(t *testing.T) {
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	n := te.startNode(t, "n1", Options{})
	conf := netConf(t, "net", testCIDR)
	first := allocate(t, n, conf, "a") // 10.244.0.2: the next would be .3
	p := netip.PrefixFrom(first, 28).Masked()
	b := blocksOf(t, cli)[p]
	b.Allocs["10.244.0.3"] = Allocation{Alloc: Alloc{Network: "net", ContainerID: "intruder", IfName: "eth0"}, ID: "x"}
	raw, _ := json.Marshal(b)
	if _, err := cli.Put(ctxT(t), BlockKey(p), string(raw)); err != nil {
		t.Fatal(err)
	}
	before, _ := n.Stats()
	got := allocate(t, n, conf, "b")
	after, _ := n.Stats()
	if got.String() == "10.244.0.3" {
		t.Fatalf("the node handed out %s, which the other writer recorded", got)
	}
	if after-before != 2 {
		t.Errorf("%d transactions, want 2 (one lost compare-and-swap, one after re-reading)", after-before)
	}
	if held := holders(t, cli); held[netip.MustParseAddr("10.244.0.3")] != "intruder" || held[got] != "b" {
		t.Fatalf("etcd holds %v", held)
	}
}

// TestBatching: calls waiting together are committed in one transaction,
// whatever blocks they need.
func TestBatching(t *testing.T) {
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg, err := ReadConfig(ctxT(t), cli)
	if err != nil {
		t.Fatal(err)
	}
	mem := &membership{cli: te.client(t), node: nodeRecord{Name: "n1", IP: netip.MustParseAddr("192.0.2.1")}, log: discard()}
	go mem.run(ctx)
	waitFor(t, "registration", func() bool { return mem.current() != 0 })
	a, err := newAllocator(mem.cli, cfg, mem, t.TempDir(), 0, discard())
	if err != nil {
		t.Fatal(err)
	}
	const n = 100 // 8 blocks of 13
	results := make(chan opResult, n)
	for i := range n {
		go func() {
			results <- a.call(ctx, &op{kind: opAdd, owner: Alloc{Network: "net", ContainerID: fmt.Sprint("c", i), IfName: "eth0"}, pools: []int{0}})
		}()
	}
	waitFor(t, "every call to wait", func() bool { return len(a.ops) == n })
	go a.run(ctx) // now the allocator finds them all waiting
	seen := map[netip.Addr]bool{}
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if seen[r.addrs[0]] {
			t.Fatalf("%s handed out twice", r.addrs[0])
		}
		seen[r.addrs[0]] = true
	}
	a.stats.mu.Lock()
	txs, allocs := a.stats.Transactions, a.stats.Allocations
	a.stats.mu.Unlock()
	if txs != 1 || allocs != n {
		t.Fatalf("%d allocations in %d transactions, want %d in 1", allocs, txs, n)
	}
	if held := holders(t, cli); len(held) != n {
		t.Fatalf("%d allocations in etcd, want %d", len(held), n)
	}
}

// TestLeaseLapseFreesNothing: a node cut off from etcd past its lease TTL
// loses its lease but not its blocks: another node claims new blocks, the
// node registers again when etcd is back and goes on allocating in its
// own blocks.
func TestLeaseLapseFreesNothing(t *testing.T) {
	te := startEtcd(t)
	cli := te.initCluster(t, testCIDR)
	n1 := te.startNode(t, "n1", Options{NodeTTL: 2 * time.Second})
	conf := netConf(t, "net", testCIDR)
	a := allocate(t, n1, conf, "a")
	te.proxy.down()
	waitFor(t, "n1's lease to lapse", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		nodes, err := Nodes(ctx, cli)
		return err == nil && !slices.Contains(nodes, "n1")
	})
	// n2 reaches etcd directly, not through the proxy.
	n2 := startDirect(t, te, "n2")
	for i := range 20 {
		got := allocate(t, n2, conf, fmt.Sprint("n2-", i))
		if netip.PrefixFrom(got, 28).Masked() == netip.PrefixFrom(a, 28).Masked() {
			t.Fatalf("n2 got %s in n1's block while n1's lease had lapsed", got)
		}
	}
	if b := blocksOf(t, cli)[netip.PrefixFrom(a, 28).Masked()]; b == nil || b.Node != "n1" {
		t.Fatalf("n1's block after its lease lapsed: %+v", b)
	}
	te.proxy.up(t)
	waitFor(t, "n1 to register again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		nodes, err := Nodes(ctx, cli)
		return err == nil && slices.Contains(nodes, "n1")
	})
	waitFor(t, "n1 to allocate again", func() bool {
		_, err := n1.Allocate(ctxT(t), conf, owner("b"))
		return err == nil
	})
	if held := holders(t, cli); held[a] != "a" {
		t.Fatalf("after the lapse etcd records %s as held by %q, want a", a, held[a])
	}
}

// startDirect starts a node that reaches etcd without the proxy.
func startDirect(t *testing.T, te *testEtcd, name string) *testNode {
	t.Helper()
	c, err := Start(Options{Etcd: EtcdOptions{Endpoints: []string{te.endpoint}}, NodeName: name,
		NodeIP: netip.MustParseAddr("192.0.2.2"), DataDir: t.TempDir(), NoRoutes: true, Log: discard()}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	waitFor(t, name+" registered", func() bool { return c.alloc.mem.current() != 0 })
	return &testNode{Cluster: c, name: name}
}
