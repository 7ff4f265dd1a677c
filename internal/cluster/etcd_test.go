package cluster

// An etcd server inside the test process (go.etcd.io/etcd/server/v3/embed,
// the release of the client Pier links), so that the allocator's etcd
// behaviour is tested where it lives, without binaries. It listens on unix
// sockets in the test's temp dir, never on a TCP port: nothing reaches the
// host's network. etcd names unix sockets like "host:port" relative to the
// working directory, so a test using it runs in its temp dir (t.Chdir: such
// tests cannot be parallel).
//
// Nodes reach etcd through a proxy the test can cut: connections are
// dropped and new ones refused, so the node's etcd client waits out its
// deadlines as when etcd or the network is down, while the test still
// reads etcd directly.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
)

type testEtcd struct {
	t        *testing.T
	cfg      *embed.Config
	e        *embed.Etcd
	endpoint string        // etcd itself
	proxy    *proxy        // the nodes' way to it
	closed   chan struct{} // closed once the last stop has finished
}

// startEtcd starts etcd in a fresh temp dir, made the working directory;
// tune, if given, changes its config first.
func startEtcd(t *testing.T, tune ...func(*embed.Config)) *testEtcd {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(dir, "etcd")
	client, peer := url.URL{Scheme: "unix", Host: "client:1"}, url.URL{Scheme: "unix", Host: "peer:1"}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	for _, f := range tune {
		f(cfg)
	}
	te := &testEtcd{t: t, cfg: cfg, endpoint: client.String(), proxy: &proxy{path: "nodes:1", target: client.Host}}
	te.start()
	te.proxy.up(t)
	t.Cleanup(te.proxy.down)
	t.Cleanup(func() {
		te.stop()
		<-te.closed
	})
	return te
}

func (te *testEtcd) start() {
	te.t.Helper()
	if te.closed != nil {
		<-te.closed
	}
	e, err := embed.StartEtcd(te.cfg)
	if err != nil {
		te.t.Fatalf("start etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		te.t.Fatal("etcd did not become ready")
	}
	te.e = e
}

// stop stops etcd; its data stays for start. Clients lose it at once;
// the server finishes closing in the background (it waits for open
// streams, such as lease keep-alives, for up to 7 s).
func (te *testEtcd) stop() {
	if te.e == nil {
		return
	}
	e, closed := te.e, make(chan struct{})
	te.e, te.closed = nil, closed
	go func() {
		e.Close()
		close(closed)
	}()
}

func (te *testEtcd) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := Connect(EtcdOptions{Endpoints: []string{te.endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// initCluster writes the cluster settings: one IPv4 CIDR cut into /28
// blocks (13 addresses each), so that tests fill blocks quickly.
func (te *testEtcd) initCluster(t *testing.T, cidr string) *clientv3.Client {
	t.Helper()
	cli := te.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := InitConfig(ctx, cli, Config{CIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}, BlockSize4: 28}); err != nil {
		t.Fatal(err)
	}
	return cli
}

type testNode struct {
	*Cluster
	name    string
	dataDir string
}

// startNode starts cluster mode for node name (no route agent) and waits
// until the node is registered.
func (te *testEtcd) startNode(t *testing.T, name string, o Options) *testNode {
	t.Helper()
	o.Etcd = EtcdOptions{Endpoints: []string{"unix://" + te.proxy.path}}
	o.NodeName, o.NodeIP, o.NoRoutes = name, netip.MustParseAddr("192.0.2.1"), true
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	c, err := Start(o, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{Cluster: c, name: name, dataDir: o.DataDir}
	t.Cleanup(func() { c.Close() })
	waitFor(t, "node "+name+" registered", func() bool { return c.alloc.mem.current() != 0 })
	return n
}

// waitFor polls cond every 50 ms for up to 30 s (no test asserts a time:
// the bound only stops a broken test).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// netConf is a cluster network's IPAM config: the cluster CIDR as its subnet.
func netConf(t *testing.T, name, cidr string, requested ...string) *config.IPAMConfig {
	t.Helper()
	sets, err := config.ParseRangeSets("test", [][]config.RangeSpec{{{Subnet: cidr}}})
	if err != nil {
		t.Fatal(err)
	}
	conf := &config.IPAMConfig{Type: config.IPAMType, Name: name, RangeSets: sets}
	for _, r := range requested {
		conf.Requested = append(conf.Requested, netip.MustParseAddr(r))
	}
	return conf
}

func owner(id string) ipam.Owner { return ipam.Owner{ContainerID: id, IfName: "eth0"} }

// allocate is Allocate that fails the test on error and returns the
// address.
func allocate(t *testing.T, a ipam.Allocator, conf *config.IPAMConfig, id string) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := a.Allocate(ctx, conf, owner(id))
	if err != nil {
		t.Fatalf("Allocate(%s): %v", id, err)
	}
	if len(addrs) != 1 {
		t.Fatalf("Allocate(%s) = %v, want one address", id, addrs)
	}
	return addrs[0].Prefix.Addr()
}

// holders reads every allocation of the cluster from etcd: address →
// owner's container ID. It retries while the client reconnects.
func holders(t *testing.T, cli *clientv3.Client) map[netip.Addr]string {
	t.Helper()
	var all map[netip.Prefix]revBlock
	waitFor(t, "etcd to answer", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		all, _, err = ListBlocks(ctx, cli)
		return err == nil
	})
	out := map[netip.Addr]string{}
	for _, rb := range all {
		for addr, a := range rb.b.Holdings() {
			if prev, dup := out[addr]; dup {
				t.Fatalf("%s recorded twice (%s and %s)", addr, prev, a.ContainerID)
			}
			out[addr] = a.ContainerID
		}
	}
	return out
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var _ = fmt.Sprint

// proxy forwards unix connections from path to target, until down.
type proxy struct {
	path, target string

	mu    sync.Mutex // guards l and conns
	l     net.Listener
	conns map[net.Conn]bool
}

// up listens and forwards (again).
func (p *proxy) up(t *testing.T) {
	t.Helper()
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.l, p.conns = l, map[net.Conn]bool{}
	p.mu.Unlock()
	go p.serve(l)
}

func (p *proxy) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed by down
		}
		go p.forward(c)
	}
}

func (p *proxy) forward(c net.Conn) {
	up, err := net.Dial("unix", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.conns == nil { // cut meanwhile
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
	c.Close()
}

// down refuses new connections and drops the open ones.
func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close() // removes the socket file
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func execIP(args ...string) ([]byte, error) { return exec.Command("ip", args...).CombinedOutput() }
