package cluster

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1/ipamv1grpc"
)

// Options configures cluster mode in pierd.
type Options struct {
	Etcd     EtcdOptions
	NodeName string
	NodeIP   netip.Addr
	NodeIP6  netip.Addr // optional: the next hop of the node's IPv6 blocks
	DataDir  string     // for the release queue
	Version  string
	Log      *slog.Logger
	// BlockGrace is how long an empty block stays with the node (0:
	// BlockGrace).
	BlockGrace time.Duration
	// NodeTTL is the node lease's TTL, whole seconds (0: LeaseTTL); tests
	// shorten it to see a lease lapse quickly.
	NodeTTL time.Duration
	// NoRoutes disables the route agent (tests of the allocator alone).
	NoRoutes bool
}

// Cluster is pierd's cluster mode: the IPAM service over etcd, the node's
// membership and the route agent.
type Cluster struct {
	ipamv1grpc.UnimplementedIPAMServer
	cli     *clientv3.Client
	cfg     Config
	alloc   *Allocator
	agent   *Agent
	opts    Options
	started time.Time
	cancel  context.CancelFunc
	done    chan struct{}
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
	c := &Cluster{cli: cli, cfg: cfg, opts: o, started: time.Now(), cancel: cancel, done: make(chan struct{})}
	c.alloc = newAllocator(cli, cfg, mem, o.DataDir, o.BlockGrace, o.Log)
	go mem.run(ctx)
	running := 1
	finished := make(chan struct{}, 2)
	go func() { c.alloc.run(ctx); finished <- struct{}{} }()
	if !o.NoRoutes {
		c.agent = &Agent{Cli: cli, Cfg: cfg, Node: o.NodeName, NodeIP: o.NodeIP, NodeIP6: o.NodeIP6, Log: o.Log}
		running++
		go func() { c.agent.Run(ctx); finished <- struct{}{} }()
	}
	go func() {
		for range running {
			<-finished
		}
		close(c.done)
	}()
	o.Log.Info("cluster mode", "node", o.NodeName, "ip", o.NodeIP, "cidrs", cfg.CIDRs, "mode", cfg.Mode)
	return c, nil
}

// Close stops the agent and the allocator and revokes the node's lease.
// Routes stay: containers keep their connectivity while pierd is away.
func (c *Cluster) Close() error {
	c.cancel()
	<-c.done
	return c.cli.Close()
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

// pools maps the request's range sets to cluster CIDRs: each range set's
// subnet must lie in a cluster CIDR (the netconf's "subnet" is normally
// the cluster CIDR itself). No range set: one address per cluster CIDR.
func (c *Cluster) pools(n *ipamv1.Network) ([]int, error) {
	if n == nil || n.GetName() == "" {
		return nil, cnierr.New(cnierr.InvalidConfig, "the request names no network")
	}
	if err := config.ValidateNetworkName(n.GetName()); err != nil {
		return nil, err
	}
	var out []int
	for i, set := range n.GetRangeSets() {
		found := -1
		for _, r := range set.GetRanges() {
			p, err := netip.ParsePrefix(r.GetSubnet())
			if err != nil {
				return nil, cnierr.New(cnierr.InvalidConfig, "range set %d: subnet %q: %v", i, r.GetSubnet(), err)
			}
			for j, cidr := range c.cfg.CIDRs {
				if cidr.Addr().Is4() == p.Addr().Is4() && (cidr.Overlaps(p)) {
					found = j
				}
			}
		}
		if found < 0 {
			return nil, cnierr.New(cnierr.InvalidConfig, "range set %d of network %q is outside the cluster CIDRs %v", i, n.GetName(), c.cfg.CIDRs)
		}
		out = append(out, found)
	}
	if len(out) == 0 {
		for j := range c.cfg.CIDRs {
			out = append(out, j)
		}
	}
	return out, nil
}

func allocOf(network string, o *ipamv1.Owner) Alloc {
	return Alloc{Network: network, ContainerID: o.GetContainerId(), IfName: o.GetIfName()}
}

func checkOwner(a Alloc) error {
	if err := validOwner(a); err != nil {
		return cnierr.Wrap(err, cnierr.InvalidEnv, "CNI_CONTAINERID %q / CNI_IFNAME %q", a.ContainerID, a.IfName)
	}
	return nil
}

// Allocate implements the API.
func (c *Cluster) Allocate(ctx context.Context, req *ipamv1.AllocateRequest) (*ipamv1.AllocateResponse, error) {
	pools, err := c.pools(req.GetNetwork())
	if err != nil {
		return nil, toStatus(err)
	}
	want, err := c.requested(req.GetRequested(), pools)
	if err != nil {
		return nil, toStatus(err)
	}
	owner := allocOf(req.GetNetwork().GetName(), req.GetOwner())
	if err := checkOwner(owner); err != nil {
		return nil, toStatus(err)
	}
	r := c.alloc.call(ctx, &op{kind: opAdd, owner: owner, pools: pools, want: want})
	if r.err != nil {
		return nil, toStatus(r.err)
	}
	resp := &ipamv1.AllocateResponse{}
	for i, a := range r.addrs {
		bits := c.cfg.BlockBits(c.cfg.CIDRs[pools[i]])
		block := netip.PrefixFrom(a, bits).Masked()
		resp.Addresses = append(resp.Addresses, &ipamv1.Address{
			Address: netip.PrefixFrom(a, bits).String(), Gateway: block.Addr().Next().String(), RangeSet: uint32(i),
		})
	}
	return resp, nil
}

// requested maps requested addresses (CNI_ARGS IP=, the ips capability)
// to the pools: each must lie in one pool's cluster CIDR, at most one per
// pool. The allocator then takes it in a block of the node or claims its
// free block (package doc, "Requested addresses").
func (c *Cluster) requested(reqs []string, pools []int) ([]netip.Addr, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	want := make([]netip.Addr, len(pools))
	for _, r := range reqs {
		a, err := netip.ParseAddr(r)
		if err != nil || a.Zone() != "" {
			return nil, cnierr.New(cnierr.InvalidConfig, "requested address %q is not an IP address", r)
		}
		a = a.Unmap()
		i := slices.IndexFunc(pools, func(p int) bool { return c.cfg.CIDRs[p].Contains(a) })
		switch {
		case i < 0:
			return nil, cnierr.New(cnierr.AddressUnavailable, "requested address %s is outside the network's cluster CIDRs", a)
		case want[i].IsValid():
			return nil, cnierr.New(cnierr.AddressUnavailable, "requested addresses %s and %s are in the same cluster CIDR %s: one address per range set", want[i], a, c.cfg.CIDRs[pools[i]])
		}
		want[i] = a
	}
	return want, nil
}

// Release implements the API. With etcd down the release is queued and
// the call succeeds (package doc, "etcd failures").
func (c *Cluster) Release(ctx context.Context, req *ipamv1.ReleaseRequest) (*ipamv1.ReleaseResponse, error) {
	if _, err := c.pools(req.GetNetwork()); err != nil {
		return nil, toStatus(err)
	}
	owner := allocOf(req.GetNetwork().GetName(), req.GetOwner())
	if err := checkOwner(owner); err != nil {
		return nil, toStatus(err)
	}
	r := c.alloc.call(ctx, &op{kind: opDel, owner: owner, queue: true})
	if r.err != nil {
		return nil, toStatus(r.err)
	}
	return &ipamv1.ReleaseResponse{Released: uint32(r.released)}, nil
}

// Check implements the API: what the owner holds on this node.
func (c *Cluster) Check(ctx context.Context, req *ipamv1.CheckRequest) (*ipamv1.CheckResponse, error) {
	if _, err := c.pools(req.GetNetwork()); err != nil {
		return nil, toStatus(err)
	}
	owner := allocOf(req.GetNetwork().GetName(), req.GetOwner())
	held, err := c.held(ctx, owner)
	if err != nil {
		return nil, toStatus(err)
	}
	if len(held) == 0 {
		return nil, toStatus(cnierr.New(cnierr.UnknownContainer, "container %s (interface %s) holds no address in network %q",
			owner.ContainerID, owner.IfName, owner.Network))
	}
	resp := &ipamv1.CheckResponse{}
	for _, a := range held {
		resp.Addresses = append(resp.Addresses, a.String())
	}
	return resp, nil
}

// held returns owner's addresses from the allocator's copy of the node's
// blocks: the node is their only writer, so the copy is current, and DEL
// (whose first step this is) works with etcd down.
func (c *Cluster) held(ctx context.Context, owner Alloc) ([]netip.Addr, error) {
	r := c.alloc.call(ctx, &op{kind: opCheck, owner: owner})
	if r.err != nil {
		return nil, r.err
	}
	slices.SortFunc(r.addrs, netip.Addr.Compare)
	return r.addrs, nil
}

// GC implements the API: the network's allocations of this node whose
// owner is not valid are released.
func (c *Cluster) GC(ctx context.Context, req *ipamv1.GCRequest) (*ipamv1.GCResponse, error) {
	if _, err := c.pools(req.GetNetwork()); err != nil {
		return nil, toStatus(err)
	}
	name := req.GetNetwork().GetName()
	valid := map[Alloc]bool{}
	for _, o := range req.GetValid() {
		valid[allocOf(name, o)] = true
	}
	r := c.alloc.call(ctx, &op{kind: opGC, owner: Alloc{Network: name}, valid: valid})
	if r.err != nil {
		return nil, toStatus(r.err)
	}
	return &ipamv1.GCResponse{Released: uint32(r.released)}, nil
}

// List implements the API: the whole cluster's allocations (every node's
// blocks), per network.
func (c *Cluster) List(ctx context.Context, req *ipamv1.ListRequest) (*ipamv1.ListResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, OpTimeout)
	defer cancel()
	all, _, err := ListBlocks(ctx, c.cli)
	if err != nil {
		return nil, toStatus(unavailable(err))
	}
	byNet := map[string]*ipamv1.NetworkLeases{}
	var addrs []netip.Addr
	owners := map[netip.Addr]Alloc{}
	for _, rb := range all {
		for a, o := range rb.b.Holdings() {
			if req.GetNetwork() != "" && o.Network != req.GetNetwork() {
				continue
			}
			addrs = append(addrs, a)
			owners[a] = o
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	var names []string
	for _, a := range addrs {
		o := owners[a]
		nl := byNet[o.Network]
		if nl == nil {
			nl = &ipamv1.NetworkLeases{Name: o.Network}
			byNet[o.Network] = nl
			names = append(names, o.Network)
		}
		rs := int32(-1)
		for i, cidr := range c.cfg.CIDRs {
			if cidr.Contains(a) {
				rs = int32(i)
			}
		}
		nl.Leases = append(nl.Leases, &ipamv1.Lease{Address: a.String(), RangeSet: rs,
			Owner: &ipamv1.Owner{ContainerId: o.ContainerID, IfName: o.IfName}})
	}
	slices.Sort(names)
	resp := &ipamv1.ListResponse{}
	for _, n := range names {
		resp.Networks = append(resp.Networks, byNet[n])
	}
	return resp, nil
}

// Status implements the API. With a network: code 50 when etcd does not
// answer (an ADD could not be served).
func (c *Cluster) Status(ctx context.Context, req *ipamv1.StatusRequest) (*ipamv1.StatusResponse, error) {
	resp := &ipamv1.StatusResponse{Version: c.opts.Version, StartedUnix: c.started.Unix(), DataDir: c.opts.DataDir}
	if req.GetNetwork() == nil {
		return resp, nil
	}
	if _, err := c.pools(req.GetNetwork()); err != nil {
		return nil, toStatus(err)
	}
	ctx, cancel := context.WithTimeout(ctx, OpTimeout)
	defer cancel()
	if _, err := c.cli.Get(ctx, configKey); err != nil {
		return nil, toStatus(cnierr.Wrap(err, cnierr.PluginNotAvailable, "etcd is unreachable: network %q cannot allocate", req.GetNetwork().GetName()))
	}
	return resp, nil
}

// toStatus turns a coded error into a gRPC status with a pier.ipam.v1.Error
// detail, as package ipamrpc does, so the plugin returns the CNI error.
func toStatus(err error) error {
	te := cnierr.ToCNI(err)
	code := codes.Internal
	switch te.Code {
	case cnierr.TryAgainLater:
		code = codes.Unavailable
	case cnierr.UnknownContainer:
		code = codes.NotFound
	case cnierr.InvalidConfig, cnierr.InvalidEnv:
		code = codes.InvalidArgument
	case cnierr.PluginNotAvailable, cnierr.AddressUnavailable:
		code = codes.FailedPrecondition
	case cnierr.PoolExhausted:
		code = codes.ResourceExhausted
	}
	st := status.New(code, te.Msg)
	if d, derr := st.WithDetails(&ipamv1.Error{CniCode: uint32(te.Code), Msg: te.Msg, Details: te.Details}); derr == nil {
		st = d
	}
	return st.Err()
}

// validOwner is store.ValidOwner's rule, and a network name.
func validOwner(a Alloc) error {
	if err := config.ValidateNetworkName(a.Network); err != nil {
		return err
	}
	return store.ValidOwner(config.Owner{ContainerID: a.ContainerID, IfName: a.IfName})
}
