package ipamrpc

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1/ipamv1grpc"
)

// DefaultTimeout bounds a Client call whose context has no deadline.
const DefaultTimeout = 10 * time.Second

// Client is a grpc-go client of pierd for operators' tools (pierctl) and
// tests. Every method applies DefaultTimeout when ctx has no deadline, and
// returns errors with the CNI codes of the README's table: pierd
// unreachable is code 11.
type Client struct {
	socket string
	cc     *grpc.ClientConn
	api    ipamv1grpc.IPAMClient
}

// Dial returns a client of the pierd listening on the unix socket at
// socket. It does not connect yet: the first call does, and fails at once
// (code 11) when nothing listens.
func Dial(socket string) (*Client, error) {
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("pierd client for %s: %w", abs, err)
	}
	return &Client{socket: abs, cc: cc, api: ipamv1grpc.NewIPAMClient(cc)}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.cc.Close() }

// API is the generated client, for calls the methods below do not cover.
func (c *Client) API() ipamv1grpc.IPAMClient { return c.api }

// Where names the daemon for people: "pierd at /run/pier/pierd.sock".
func (c *Client) Where() string { return "pierd at " + c.socket }

// PoolUsage is one range's size and use.
type PoolUsage struct {
	RangeSet             int
	Subnet               netip.Prefix
	RangeStart, RangeEnd netip.Addr
	// Size counts the addresses that can be handed out (the range less its
	// gateway), saturated at 2^64-1.
	Size, Used uint64
}

// NetworkLeases is one network's reservations as pierd reports them.
type NetworkLeases struct {
	Name string
	// Pools is empty when pierd has no record of the network's ranges
	// (it has not served the network since its state was created).
	Pools []PoolUsage
	// Leases in address order; RangeSet is -1 when no recorded range
	// holds the address.
	Leases []ipam.Reservation
}

// NetworkStatus is one network's readiness as pierd sees it.
type NetworkStatus struct {
	Name   string
	Ready  bool
	Reason string // why not Ready
	Pools  []PoolUsage
	Leases int
}

// DaemonStatus is pierd's own state.
type DaemonStatus struct {
	Version  string
	Started  time.Time
	DataDir  string
	Networks []NetworkStatus
}

// Leases returns the reservations and pool usage of network, or of every
// network pierd has a store for when network is empty.
func (c *Client) Leases(ctx context.Context, network string) ([]NetworkLeases, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	resp, err := c.api.List(ctx, &ipamv1.ListRequest{Network: network})
	if err != nil {
		return nil, c.coded(err, "List")
	}
	var out []NetworkLeases
	for _, n := range resp.GetNetworks() {
		nl := NetworkLeases{Name: n.GetName(), Pools: pools(n.GetPools())}
		for _, l := range n.GetLeases() {
			a, err := netip.ParseAddr(l.GetAddress())
			if err != nil {
				return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd returned address %q", l.GetAddress())
			}
			nl.Leases = append(nl.Leases, ipam.Reservation{
				Addr: a, Owner: ownerOf(l.GetOwner()), RangeSet: int(l.GetRangeSet()), Problem: l.GetProblem(),
			})
		}
		out = append(out, nl)
	}
	return out, nil
}

// Reservations returns the reservations of conf's network, in address
// order, with range sets worked out from conf (as ipam.Allocator.List
// does), for a tool that has the config.
func (c *Client) Reservations(ctx context.Context, conf *config.IPAMConfig) ([]ipam.Reservation, error) {
	nets, err := c.Leases(ctx, conf.Name)
	if err != nil {
		return nil, err
	}
	var out []ipam.Reservation
	for _, n := range nets {
		for _, r := range n.Leases {
			r.RangeSet = -1
			for i, set := range conf.RangeSets {
				if set.Contains(r.Addr) {
					r.RangeSet = i
					break
				}
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// Ready returns nil when conf's network can serve an ADD, else a code-50
// error saying why (as ipam.Allocator.Status does); pierd unreachable is
// code 50 too. It records conf's ranges in pierd, as any plugin call does.
func (c *Client) Ready(ctx context.Context, conf *config.IPAMConfig) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	_, err := c.api.Status(ctx, &ipamv1.StatusRequest{Network: NetworkOf(conf)})
	if err == nil {
		return nil
	}
	err = c.coded(err, "Status")
	if code := cnierr.CodeOf(err); code != cnierr.PluginNotAvailable && code != cnierr.LimitedConnectivity {
		return cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %q cannot allocate", conf.Name)
	}
	return err
}

// Daemon returns pierd's version, start time, data dir, and the readiness
// and pool usage of every network it has a store for.
func (c *Client) Daemon(ctx context.Context) (*DaemonStatus, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	resp, err := c.api.Status(ctx, &ipamv1.StatusRequest{})
	if err != nil {
		return nil, c.coded(err, "Status")
	}
	ds := &DaemonStatus{Version: resp.GetVersion(), Started: time.Unix(resp.GetStartedUnix(), 0), DataDir: resp.GetDataDir()}
	for _, n := range resp.GetNetworks() {
		ds.Networks = append(ds.Networks, NetworkStatus{
			Name: n.GetName(), Ready: n.GetReady(), Reason: n.GetReason(), Pools: pools(n.GetPools()), Leases: int(n.GetLeases()),
		})
	}
	return ds, nil
}

// NetworkOf renders conf's network for a request.
func NetworkOf(conf *config.IPAMConfig) *ipamv1.Network {
	n := &ipamv1.Network{Name: conf.Name}
	for _, set := range conf.RangeSets {
		ws := &ipamv1.RangeSet{}
		for _, r := range set {
			s := r.Spec()
			ws.Ranges = append(ws.Ranges, &ipamv1.Range{Subnet: s.Subnet, RangeStart: s.RangeStart, RangeEnd: s.RangeEnd, Gateway: s.Gateway})
		}
		n.RangeSets = append(n.RangeSets, ws)
	}
	return n
}

func pools(ps []*ipamv1.PoolUsage) []PoolUsage {
	var out []PoolUsage
	for _, p := range ps {
		u := PoolUsage{RangeSet: int(p.GetRangeSet()), Size: p.GetSize(), Used: p.GetUsed()}
		// pierd renders these from validated ranges; a malformed one stays zero.
		u.Subnet, _ = netip.ParsePrefix(p.GetSubnet())
		u.RangeStart, _ = netip.ParseAddr(p.GetRangeStart())
		u.RangeEnd, _ = netip.ParseAddr(p.GetRangeEnd())
		out = append(out, u)
	}
	return out
}

// coded turns a call's error into a CNI-coded one.
func (c *Client) coded(err error, method string) error {
	return FromStatus(err, fmt.Sprintf("pierd at %s (%s)", c.socket, method))
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}
