// Package ipamrpc is pierd's IPAM service: the pier.ipam.v1 gRPC API
// (ipamv1, ipamv1grpc: generated from the .proto files beside them, `make
// proto`), its server over package ipam and the local file store, and a
// grpc-go client for pierctl and tests. The plugin binaries use the lean
// client in lite instead; see its package doc for why.
//
// The server keeps no reservation state of its own: every call runs package
// ipam's allocator over the same file store local mode uses, under
// <data-dir>/<network>/, so a pierd killed at any instruction loses nothing
// (the store is crash-safe against a killed writer) and pierd and local-mode
// plugins on one node can even share a network. What it keeps in memory is
// a semaphore per network, so that concurrent calls queue in pierd instead
// of each parking a thread in flock(2), and the range sets each network was
// last served with (also written to <data-dir>/.pierd/networks/), so that
// List, Status and the metrics can report pool usage between requests.
package ipamrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipam/store"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1/ipamv1grpc"
)

// stateDir holds pierd's own bookkeeping under the data dir. Its name
// starts with a dot, which no network name can, so it never collides with a
// network's store.
const stateDir = ".pierd"

// Observer is told what each call changed, for metrics.
type Observer interface {
	// Changed reports how many addresses one call reserved and released in
	// network (releases include GC's; a reboot purge is not counted).
	Changed(network string, reserved, released int)
}

// ServerOptions configures a Server.
type ServerOptions struct {
	DataDir  string
	Version  string
	Observer Observer     // nil: no metrics
	Log      *slog.Logger // nil: discard
}

// Server implements ipamv1grpc.IPAMServer.
type Server struct {
	ipamv1grpc.UnimplementedIPAMServer
	opts    ServerOptions
	started time.Time

	mu   sync.Mutex // guards nets
	nets map[string]*network
}

// network is one network's in-process state.
type network struct {
	name  string
	store *store.File
	// sem admits one call at a time into the network; the store's flock
	// still orders pierd against anything else using the store.
	sem chan struct{}

	mu   sync.Mutex // guards sets
	sets []config.RangeSet
}

// NewServer returns a server over opts.DataDir, with the range sets of the
// networks it served before (if any were recorded).
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(opts.DataDir) {
		return nil, fmt.Errorf("data dir %q must be an absolute path", opts.DataDir)
	}
	s := &Server{opts: opts, started: time.Now(), nets: map[string]*network{}}
	if err := os.MkdirAll(filepath.Join(opts.DataDir, stateDir, "networks"), 0o755); err != nil {
		return nil, fmt.Errorf("create pierd state directory: %w", err)
	}
	s.loadRemembered()
	return s, nil
}

// Allocate implements the API.
func (s *Server) Allocate(ctx context.Context, req *ipamv1.AllocateRequest) (*ipamv1.AllocateResponse, error) {
	n, conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, toStatus(err)
	}
	for _, r := range req.GetRequested() {
		a, err := netip.ParseAddr(r)
		if err != nil || a.Zone() != "" {
			return nil, toStatus(cnierr.New(cnierr.InvalidConfig, "requested address %q is not an IP address", r))
		}
		conf.Requested = append(conf.Requested, a.Unmap())
	}
	var res *current.Result
	err = s.run(ctx, n, func(st store.Store) error {
		res, err = ipam.New(conf, st).Add(ctx, ownerOf(req.GetOwner()))
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &ipamv1.AllocateResponse{}
	for i, ipc := range res.IPs {
		a := &ipamv1.Address{Address: ipc.Address.String(), RangeSet: uint32(i)}
		if ipc.Gateway != nil {
			a.Gateway = ipc.Gateway.String()
		}
		resp.Addresses = append(resp.Addresses, a)
	}
	return resp, nil
}

// Release implements the API.
func (s *Server) Release(ctx context.Context, req *ipamv1.ReleaseRequest) (*ipamv1.ReleaseResponse, error) {
	n, conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, toStatus(err)
	}
	var released int
	err = s.runCounted(ctx, n, &released, func(st store.Store) error {
		return ipam.New(conf, st).Del(ctx, ownerOf(req.GetOwner()))
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &ipamv1.ReleaseResponse{Released: uint32(released)}, nil
}

// Check implements the API.
func (s *Server) Check(ctx context.Context, req *ipamv1.CheckRequest) (*ipamv1.CheckResponse, error) {
	n, conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, toStatus(err)
	}
	var held []netip.Addr
	err = s.run(ctx, n, func(st store.Store) error {
		held, err = ipam.New(conf, st).Check(ctx, ownerOf(req.GetOwner()))
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &ipamv1.CheckResponse{}
	for _, a := range held {
		resp.Addresses = append(resp.Addresses, a.String())
	}
	return resp, nil
}

// GC implements the API.
func (s *Server) GC(ctx context.Context, req *ipamv1.GCRequest) (*ipamv1.GCResponse, error) {
	n, conf, err := s.prepare(req.GetNetwork())
	if err != nil {
		return nil, toStatus(err)
	}
	valid := make([]ipam.Owner, 0, len(req.GetValid()))
	for _, o := range req.GetValid() {
		valid = append(valid, ownerOf(o))
	}
	var released int
	err = s.runCounted(ctx, n, &released, func(st store.Store) error {
		return ipam.New(conf, st).GC(ctx, valid)
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &ipamv1.GCResponse{Released: uint32(released)}, nil
}

// List implements the API.
func (s *Server) List(ctx context.Context, req *ipamv1.ListRequest) (*ipamv1.ListResponse, error) {
	names, err := s.networkNames(req.GetNetwork())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &ipamv1.ListResponse{}
	for _, name := range names {
		n, err := s.network(name)
		if err != nil {
			return nil, toStatus(err)
		}
		sets := n.rangeSets()
		res, err := s.list(ctx, n, sets)
		if err != nil {
			return nil, toStatus(err)
		}
		nl := &ipamv1.NetworkLeases{Name: name, Pools: poolUsage(sets, res)}
		for _, r := range res {
			l := &ipamv1.Lease{Address: r.Addr.String(), RangeSet: int32(r.RangeSet), Problem: r.Problem}
			if r.Problem == "" {
				l.Owner = &ipamv1.Owner{ContainerId: r.Owner.ContainerID, IfName: r.Owner.IfName}
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
		n, conf, err := s.prepare(req.GetNetwork())
		if err == nil {
			err = s.ready(ctx, n, conf)
		}
		if err != nil {
			return nil, toStatus(err)
		}
		return resp, nil
	}
	names, err := s.networkNames("")
	if err != nil {
		return nil, toStatus(err)
	}
	for _, name := range names {
		ns, err := s.networkStatus(ctx, name)
		if err != nil {
			return nil, toStatus(err)
		}
		resp.Networks = append(resp.Networks, ns)
	}
	return resp, nil
}

func (s *Server) networkStatus(ctx context.Context, name string) (*ipamv1.NetworkStatus, error) {
	n, err := s.network(name)
	if err != nil {
		return nil, err
	}
	sets := n.rangeSets()
	res, err := s.list(ctx, n, sets)
	if err != nil {
		return nil, err
	}
	ns := &ipamv1.NetworkStatus{Name: name, Pools: poolUsage(sets, res), Leases: uint32(len(res))}
	if len(sets) == 0 {
		ns.Reason = "pierd has not served this network since its ranges were last recorded"
		return ns, nil
	}
	conf := &config.IPAMConfig{Type: config.IPAMType, Name: name, RangeSets: sets, DataDir: s.opts.DataDir}
	err = s.ready(ctx, n, conf)
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

// ready is ipam.Status over the network's store.
func (s *Server) ready(ctx context.Context, n *network, conf *config.IPAMConfig) error {
	if err := n.store.Probe(); err != nil {
		return cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %q cannot allocate", conf.Name)
	}
	return s.run(ctx, n, func(st store.Store) error { return ipam.New(conf, st).Status(ctx) })
}

func (s *Server) list(ctx context.Context, n *network, sets []config.RangeSet) ([]ipam.Reservation, error) {
	conf := &config.IPAMConfig{Type: config.IPAMType, Name: n.name, RangeSets: sets, DataDir: s.opts.DataDir}
	var res []ipam.Reservation
	err := s.run(ctx, n, func(st store.Store) error {
		var err error
		res, err = ipam.New(conf, st).List(ctx)
		return err
	})
	return res, err
}

// run calls fn with the network's store once the network admits the call.
func (s *Server) run(ctx context.Context, n *network, fn func(store.Store) error) error {
	return s.runCounted(ctx, n, nil, fn)
}

// runCounted is run that also reports what fn reserved and released to the
// Observer, and the releases to *released when it is not nil.
func (s *Server) runCounted(ctx context.Context, n *network, released *int, fn func(store.Store) error) error {
	select {
	case n.sem <- struct{}{}:
	case <-ctx.Done():
		return cnierr.Wrap(ctx.Err(), cnierr.TryAgainLater, "network %q is busy", n.name)
	}
	defer func() { <-n.sem }()
	cs := &countingStore{Store: n.store}
	err := fn(cs)
	if s.opts.Observer != nil && (cs.reserved > 0 || cs.released > 0) {
		s.opts.Observer.Changed(n.name, cs.reserved, cs.released)
	}
	if released != nil {
		*released = cs.released
	}
	return err
}

// prepare validates a request's network as LoadIPAM validates a config and
// returns its state and allocator config.
func (s *Server) prepare(wn *ipamv1.Network) (*network, *config.IPAMConfig, error) {
	if wn == nil {
		return nil, nil, cnierr.New(cnierr.InvalidConfig, "the request names no network")
	}
	if err := config.ValidateNetworkName(wn.GetName()); err != nil {
		return nil, nil, err
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
		return nil, nil, err
	}
	n, err := s.network(wn.GetName())
	if err != nil {
		return nil, nil, err
	}
	s.remember(n, sets)
	conf := &config.IPAMConfig{Type: config.IPAMType, Name: wn.GetName(), RangeSets: sets, DataDir: s.opts.DataDir}
	return n, conf, nil
}

// network returns the state of network name, opening its store on first use.
func (s *Server) network(name string) (*network, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.nets[name]; ok && n.store != nil {
		return n, nil
	}
	st, err := store.NewFile(s.opts.DataDir, name)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "open the IPAM store of network %q", name)
	}
	n := s.nets[name]
	if n == nil {
		n = &network{name: name, sem: make(chan struct{}, 1)}
		s.nets[name] = n
	}
	n.store = st
	return n, nil
}

// networkNames returns only (when set), else every network with a store
// under the data dir or known to this pierd, sorted.
func (s *Server) networkNames(only string) ([]string, error) {
	if only != "" {
		if err := config.ValidateNetworkName(only); err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join(s.opts.DataDir, only)); errors.Is(err, os.ErrNotExist) {
			return nil, nil // no store: no reservations, and List creates nothing
		}
		return []string{only}, nil
	}
	entries, err := os.ReadDir(s.opts.DataDir)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "read data dir %s", s.opts.DataDir)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && config.ValidateNetworkName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

func (n *network) rangeSets() []config.RangeSet {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sets
}

// remember records sets as the network's ranges when they changed, in
// memory and on disk (best effort: only reporting depends on it).
func (s *Server) remember(n *network, sets []config.RangeSet) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if slices.EqualFunc(n.sets, sets, func(a, b config.RangeSet) bool { return slices.Equal(a, b) }) {
		return
	}
	n.sets = sets
	if err := writeRemembered(s.rememberPath(n.name), sets); err != nil {
		s.opts.Log.Warn("cannot record the network's ranges", "network", n.name, "err", err)
	}
}

func (s *Server) rememberPath(name string) string {
	return filepath.Join(s.opts.DataDir, stateDir, "networks", name+".json")
}

// rangeJSON is a remembered range on disk.
type rangeJSON struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

func writeRemembered(path string, sets []config.RangeSet) error {
	var doc [][]rangeJSON
	for _, set := range sets {
		var js []rangeJSON
		for _, r := range set {
			js = append(js, rangeJSON(r.Spec()))
		}
		doc = append(doc, js)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// loadRemembered reads the recorded ranges of every network; a record that
// does not parse any more is skipped (the next request rewrites it).
func (s *Server) loadRemembered() {
	recorded, err := readRemembered(s.opts.DataDir, s.opts.Log)
	if err != nil {
		s.opts.Log.Warn("cannot read recorded network ranges", "err", err)
		return
	}
	for name, sets := range recorded {
		s.nets[name] = &network{name: name, sem: make(chan struct{}, 1), sets: sets}
	}
}

func ownerOf(o *ipamv1.Owner) ipam.Owner {
	return ipam.Owner{ContainerID: o.GetContainerId(), IfName: o.GetIfName()}
}

// toStatus turns a coded error into a gRPC status carrying a
// pier.ipam.v1.Error detail, so clients return the very CNI error local
// mode would. The gRPC code is for generic clients.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	te := cnierr.ToCNI(err)
	st := status.New(grpcCode(te.Code), te.Msg)
	if d, derr := st.WithDetails(&ipamv1.Error{CniCode: uint32(te.Code), Msg: te.Msg, Details: te.Details}); derr == nil {
		st = d
	}
	return st.Err()
}

func grpcCode(cni uint) codes.Code {
	switch cni {
	case cnierr.TryAgainLater:
		return codes.Unavailable
	case cnierr.UnknownContainer:
		return codes.NotFound
	case cnierr.IncompatibleVersion, cnierr.UnsupportedField, cnierr.InvalidEnv, cnierr.DecodingFailure, cnierr.InvalidConfig:
		return codes.InvalidArgument
	case cnierr.PluginNotAvailable, cnierr.LimitedConnectivity, cnierr.AddressUnavailable:
		return codes.FailedPrecondition
	case cnierr.PoolExhausted:
		return codes.ResourceExhausted
	}
	return codes.Internal
}

// CNICode returns the CNI code of an error returned by the service: the
// pier.ipam.v1.Error detail's, else one derived from the gRPC code.
func CNICode(err error) uint {
	st, ok := status.FromError(err)
	if !ok {
		return cnierr.CodeOf(err)
	}
	for _, d := range st.Details() {
		if e, ok := d.(*ipamv1.Error); ok {
			return uint(e.GetCniCode())
		}
	}
	switch st.Code() {
	case codes.OK:
		return 0
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return cnierr.TryAgainLater
	}
	return cnierr.IOFailure
}
