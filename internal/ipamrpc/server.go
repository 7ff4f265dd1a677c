// Package ipamrpc is pierd's IPAM service: the pier.ipam.v1 gRPC API
// (ipamv1, ipamv1grpc: generated from the .proto files beside them, `make
// proto`), its server over any ipam.Allocator, and a grpc-go client for
// pierctl and tests. The plugin binaries use the lean client in lite
// instead; see its package doc for why. Errors cross the socket as the
// statuses of package rpcerr (ToStatus, FromStatus).
//
// The server translates the wire to the allocator's calls and back and
// keeps no reservation of its own: in daemon mode it serves ipam.Local
// (the file store local mode uses, under <data-dir>/<network>/, so a pierd
// killed at any instruction loses nothing); in cluster mode
// cluster.Cluster. What it keeps is the range sets each network was last
// served with (in memory and under <data-dir>/.pierd/networks/), so that
// List, Status and the metrics can report pool usage between requests,
// which name only a network.
package ipamrpc

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1/ipamv1grpc"
)

// ServerOptions configures a Server.
type ServerOptions struct {
	// Allocator serves the calls; nil: ipam.Local over DataDir (daemon
	// mode).
	Allocator ipam.Allocator
	// DataDir is pierd's data dir: reported by Status, and where the
	// server records each network's ranges.
	DataDir  string
	Version  string
	Observer ipam.Observer // for the default allocator; nil: no metrics
	Log      *slog.Logger  // nil: discard
}

// Server implements ipamv1grpc.IPAMServer over an ipam.Allocator.
type Server struct {
	ipamv1grpc.UnimplementedIPAMServer
	alloc   ipam.Allocator
	opts    ServerOptions
	started time.Time
	known   *catalog
}

// NewServer returns a server, with the range sets of the networks it
// served before (if any were recorded).
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(opts.DataDir) {
		return nil, fmt.Errorf("data dir %q must be an absolute path", opts.DataDir)
	}
	known, err := openCatalog(opts.DataDir, opts.Log)
	if err != nil {
		return nil, err
	}
	alloc := opts.Allocator
	if alloc == nil {
		alloc = ipam.NewLocal(opts.DataDir, ipam.LocalOptions{Observer: opts.Observer})
	}
	return &Server{alloc: alloc, opts: opts, started: time.Now(), known: known}, nil
}

// Allocate implements the API. The response names the owner the
// addresses were allocated to, which the plugin checks.
func (s *Server) Allocate(ctx context.Context, req *ipamv1.AllocateRequest) (*ipamv1.AllocateResponse, error) {
	conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, ToStatus(err)
	}
	for _, r := range req.GetRequested() {
		a, err := netip.ParseAddr(r)
		if err != nil || a.Zone() != "" {
			return nil, ToStatus(cnierr.New(cnierr.InvalidConfig, "requested address %q is not an IP address", r))
		}
		conf.Requested = append(conf.Requested, a.Unmap())
	}
	owner := ownerOf(req.GetOwner())
	addrs, err := s.alloc.Allocate(ctx, conf, owner)
	if err != nil {
		return nil, ToStatus(err)
	}
	resp := &ipamv1.AllocateResponse{Owner: wireOwner(owner)}
	for _, a := range addrs {
		wa := &ipamv1.Address{Address: a.Prefix.String(), RangeSet: uint32(a.RangeSet)}
		if a.Gateway.IsValid() {
			wa.Gateway = a.Gateway.String()
		}
		resp.Addresses = append(resp.Addresses, wa)
	}
	return resp, nil
}

// Release implements the API.
func (s *Server) Release(ctx context.Context, req *ipamv1.ReleaseRequest) (*ipamv1.ReleaseResponse, error) {
	conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, ToStatus(err)
	}
	n, err := s.alloc.Release(ctx, conf, ownerOf(req.GetOwner()))
	if err != nil {
		return nil, ToStatus(err)
	}
	return &ipamv1.ReleaseResponse{Released: uint32(n)}, nil
}

// Check implements the API.
func (s *Server) Check(ctx context.Context, req *ipamv1.CheckRequest) (*ipamv1.CheckResponse, error) {
	conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, ToStatus(err)
	}
	held, err := s.alloc.Check(ctx, conf, ownerOf(req.GetOwner()))
	if err != nil {
		return nil, ToStatus(err)
	}
	resp := &ipamv1.CheckResponse{}
	for _, a := range held {
		resp.Addresses = append(resp.Addresses, a.String())
	}
	return resp, nil
}

// GC implements the API.
func (s *Server) GC(ctx context.Context, req *ipamv1.GCRequest) (*ipamv1.GCResponse, error) {
	conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, ToStatus(err)
	}
	valid := make([]ipam.Owner, 0, len(req.GetValid()))
	for _, o := range req.GetValid() {
		valid = append(valid, ownerOf(o))
	}
	n, err := s.alloc.GC(ctx, conf, valid)
	if err != nil {
		return nil, ToStatus(err)
	}
	return &ipamv1.GCResponse{Released: uint32(n)}, nil
}

// List implements the API: the reservations of one network, or of every
// network the allocator knows, each with its pool usage when its ranges
// are known.
func (s *Server) List(ctx context.Context, req *ipamv1.ListRequest) (*ipamv1.ListResponse, error) {
	names, err := s.networkNames(ctx, req.GetNetwork())
	if err != nil {
		return nil, ToStatus(err)
	}
	resp := &ipamv1.ListResponse{}
	for _, name := range names {
		conf := s.known.conf(name)
		res, err := s.alloc.List(ctx, conf)
		if err != nil {
			return nil, ToStatus(err)
		}
		nl := &ipamv1.NetworkLeases{Name: name, Pools: poolUsage(conf.RangeSets, res)}
		for _, r := range res {
			l := &ipamv1.Lease{Address: r.Addr.String(), RangeSet: int32(r.RangeSet), Problem: r.Problem}
			if r.Problem == "" {
				l.Owner = wireOwner(r.Owner)
			}
			nl.Leases = append(nl.Leases, l)
		}
		resp.Networks = append(resp.Networks, nl)
	}
	return resp, nil
}

// Status implements the API. With a network it is the plugin's STATUS:
// an error (code 50) when that network cannot serve an ADD.
func (s *Server) Status(ctx context.Context, req *ipamv1.StatusRequest) (*ipamv1.StatusResponse, error) {
	resp := &ipamv1.StatusResponse{Version: s.opts.Version, StartedUnix: s.started.Unix(), DataDir: s.opts.DataDir}
	if req.GetNetwork() != nil {
		conf, err := s.prepare(req.GetNetwork())
		if err == nil {
			err = s.alloc.Status(ctx, conf)
		}
		if err != nil {
			return nil, ToStatus(err)
		}
		return resp, nil
	}
	names, err := s.networkNames(ctx, "")
	if err != nil {
		return nil, ToStatus(err)
	}
	for _, name := range names {
		ns, err := s.networkStatus(ctx, name)
		if err != nil {
			return nil, ToStatus(err)
		}
		resp.Networks = append(resp.Networks, ns)
	}
	return resp, nil
}

func (s *Server) networkStatus(ctx context.Context, name string) (*ipamv1.NetworkStatus, error) {
	conf := s.known.conf(name)
	res, err := s.alloc.List(ctx, conf)
	if err != nil {
		return nil, err
	}
	ns := &ipamv1.NetworkStatus{Name: name, Pools: poolUsage(conf.RangeSets, res), Leases: uint32(len(res))}
	if len(conf.RangeSets) == 0 {
		ns.Reason = "pierd has not served this network since its ranges were last recorded"
		return ns, nil
	}
	err = s.alloc.Status(ctx, conf)
	switch {
	case err == nil:
		ns.Ready = true
	case cnierr.CodeOf(err) == cnierr.PluginNotAvailable:
		ns.Reason = err.Error()
	default:
		return nil, err
	}
	return ns, nil
}

// prepare validates a request's network as LoadIPAM validates a config,
// records its ranges, and returns it as the allocator's config.
func (s *Server) prepare(wn *ipamv1.Network) (*config.IPAMConfig, error) {
	if wn == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "the request names no network")
	}
	if err := config.ValidateNetworkName(wn.GetName()); err != nil {
		return nil, err
	}
	var specs [][]config.RangeSpec
	for _, set := range wn.GetRangeSets() {
		var specSet []config.RangeSpec
		for _, r := range set.GetRanges() {
			specSet = append(specSet, config.RangeSpec{
				Subnet: r.GetSubnet(), RangeStart: r.GetRangeStart(), RangeEnd: r.GetRangeEnd(), Gateway: r.GetGateway(),
			})
		}
		specs = append(specs, specSet)
	}
	sets, err := config.ParseRangeSets("network.range_sets", specs)
	if err != nil {
		return nil, err
	}
	s.known.remember(wn.GetName(), sets)
	return &config.IPAMConfig{Type: config.IPAMType, Name: wn.GetName(), RangeSets: sets}, nil
}

// networkNames returns only (when set) if the allocator has reservations
// of it or the server knows its ranges, else every such network, sorted.
func (s *Server) networkNames(ctx context.Context, only string) ([]string, error) {
	if only != "" {
		if err := config.ValidateNetworkName(only); err != nil {
			return nil, err
		}
	}
	names := s.known.names()
	if inv, ok := s.alloc.(ipam.Inventory); ok {
		held, err := inv.Networks(ctx)
		if err != nil {
			return nil, err
		}
		names = append(names, held...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if only != "" {
		return slices.DeleteFunc(names, func(n string) bool { return n != only }), nil
	}
	return names, nil
}

func ownerOf(o *ipamv1.Owner) ipam.Owner {
	return ipam.Owner{ContainerID: o.GetContainerId(), IfName: o.GetIfName()}
}

func wireOwner(o ipam.Owner) *ipamv1.Owner {
	return &ipamv1.Owner{ContainerId: o.ContainerID, IfName: o.IfName}
}

// PoolUsage returns the pool usage of every network whose ranges pierd
// knows, keyed by network, for metrics.
func (s *Server) PoolUsage(ctx context.Context) (map[string][]PoolUsage, error) {
	out := map[string][]PoolUsage{}
	for _, name := range s.known.names() {
		conf := s.known.conf(name)
		res, err := s.alloc.List(ctx, conf)
		if err != nil {
			return nil, err
		}
		out[name] = pools(poolUsage(conf.RangeSets, res))
	}
	return out, nil
}
