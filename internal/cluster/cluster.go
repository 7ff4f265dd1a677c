package cluster

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/routing"
)

// Options configures cluster mode in pierd.
type Options struct {
	Etcd     EtcdOptions
	NodeName string
	NodeIP   netip.Addr
	NodeIP6  netip.Addr // optional: the next hop of the node's IPv6 blocks
	DataDir  string     // for the release queue
	Version  string     // pierd's, for the log
	Log      *slog.Logger
	// BlockGrace is how long an empty block stays with the node (0:
	// BlockGrace).
	BlockGrace time.Duration
	// NodeTTL is the node lease's TTL, whole seconds (0: LeaseTTL); tests
	// shorten it to see a lease lapse quickly.
	NodeTTL time.Duration
	// NoRoutes disables the route agent (tests of the allocator alone).
	NoRoutes bool
	// Bridges are Pier's bridges on the node (the pods'): the route agent
	// removes a block's old gateway from them, and from no other link.
	Bridges []string
}

// Cluster is pierd's cluster mode: an ipam.Allocator over etcd (which
// pierd's gRPC server serves), the node's membership and the route agent.
type Cluster struct {
	cli    *clientv3.Client
	cfg    Config
	alloc  *Allocator
	agent  *Agent
	opts   Options
	cancel context.CancelFunc
	done   chan struct{}
}

// Start connects to etcd, reads the cluster settings (waiting up to
// timeout for etcd), registers the node and starts the allocator and the
// route agent.
func Start(o Options, timeout time.Duration) (*Cluster, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.NodeName == "" || !o.NodeIP.IsValid() {
		return nil, cnierr.New(cnierr.InvalidConfig, "cluster mode needs --node-name and --node-ip")
	}
	if o.NodeIP6.IsValid() && (o.NodeIP6.Is4() || o.NodeIP6.Is4In6()) {
		return nil, cnierr.New(cnierr.InvalidConfig, "--node-ip6 %s is not an IPv6 address", o.NodeIP6)
	}
	cli, err := Connect(o.Etcd)
	if err != nil {
		return nil, err
	}
	var cfg Config
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), OpTimeout)
		cfg, err = ReadConfig(ctx, cli)
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		cli.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	mem := &membership{cli: cli, node: nodeRecord{Name: o.NodeName, IP: o.NodeIP, IP6: o.NodeIP6}, log: o.Log, ttl: int64(o.NodeTTL.Round(time.Second) / time.Second)}
	c := &Cluster{cli: cli, cfg: cfg, opts: o, cancel: cancel, done: make(chan struct{})}
	if c.alloc, err = newAllocator(cli, cfg, mem, o.DataDir, o.BlockGrace, o.Log); err != nil {
		cancel()
		cli.Close()
		return nil, err
	}
	go mem.run(ctx)
	running := 1
	finished := make(chan struct{}, 2)
	go func() { c.alloc.run(ctx); finished <- struct{}{} }()
	if !o.NoRoutes {
		c.agent = &Agent{Cli: cli, Cfg: cfg, Node: o.NodeName, NodeIP: o.NodeIP, NodeIP6: o.NodeIP6, Log: o.Log,
			dp: &routing.Programmer{Mode: cfg.Mode, VTEP: o.NodeIP, Bridges: o.Bridges, Log: o.Log}}
		running++
		go func() { c.agent.Run(ctx); finished <- struct{}{} }()
	}
	go func() {
		for range running {
			<-finished
		}
		close(c.done)
	}()
	o.Log.Info("cluster mode", "version", o.Version, "node", o.NodeName, "ip", o.NodeIP, "cidrs", cfg.CIDRs, "mode", cfg.Mode)
	return c, nil
}

// Close stops the agent and the allocator and revokes the node's lease.
// Routes stay: containers keep their connectivity while pierd is away.
func (c *Cluster) Close() error {
	c.cancel()
	<-c.done
	return c.cli.Close()
}

// RestoreGuard puts the route agent's VXLAN guard back after Pier's
// table was flushed (routing.Programmer.RestoreGuard); nothing without an
// agent.
func (c *Cluster) RestoreGuard() error {
	if c.agent == nil {
		return nil
	}
	return c.agent.dp.RestoreGuard()
}

// Config is the cluster's settings as read at start.
func (c *Cluster) Config() Config { return c.cfg }

// Stats returns the allocator's counters.
func (c *Cluster) Stats() (transactions, allocations int) {
	s := c.alloc.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Transactions, s.Allocations
}
