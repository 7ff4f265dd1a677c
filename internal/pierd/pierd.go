// Package pierd is the node daemon's process: it serves the IPAM service of
// package ipamrpc on a unix socket, with the socket's permissions and
// peer-uid checks, metrics and /healthz on a TCP address, and a draining
// stop. cmd/pierd turns flags and signals into Start and Stop.
//
// Deadlines: every call runs under the client's deadline (grpc-timeout),
// and under DefaultCallTimeout when the client sent none, so no call can
// hold a network's store forever.
//
// Stop drains: the socket stops accepting, /healthz turns 503, calls in
// flight finish (their store writes complete) and the process exits; calls
// still running when the drain deadline passes are cut, which the store's
// crash safety makes as harmless as a kill.
package pierd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipam/store"
	"github.com/pier-cni/pier/internal/ipamrpc"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1/ipamv1grpc"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// Defaults of cmd/pierd's flags.
const (
	DefaultSocket       = config.DefaultDaemonSocket
	DefaultDataDir      = config.DefaultDataDir
	DefaultMetricsAddr  = "127.0.0.1:9471"
	DefaultDrainTimeout = 10 * time.Second
	// DefaultCallTimeout bounds a call whose client sent no deadline.
	DefaultCallTimeout = 30 * time.Second
)

// maxMetricsConns bounds the connections the metrics listener holds: it
// has no authentication, and every connection is a file descriptor, which
// the IPAM socket needs too. Past it, connections wait in the kernel's
// backlog, and an idle one is closed after 30 s.
const maxMetricsConns = 16

// maxStreams bounds the calls one connection may have open at once, so
// a connection's memory is bounded too (each call's message up to
// lite.MaxRequest).
const maxStreams = 8

// Options configures a daemon.
type Options struct {
	Socket      string
	DataDir     string
	MetricsAddr string // "" disables metrics and /healthz
	// Allow lets uids other than root (and pierd's own) call, each about
	// its networks only (authz.go); non-empty opens the socket's file modes
	// (socket.go) and leaves SO_PEERCRED as the gate.
	Allow []Grant
	// Limits bound the connections pierd holds, per uid and in total
	// (gate.go).
	Limits  ConnLimits
	Version string
	Log     *slog.Logger
	// IPAM, when set, is the allocator served instead of the local store
	// under DataDir (cluster mode: package cluster).
	IPAM ipam.Allocator
}

// Daemon is a running pierd.
type Daemon struct {
	log      *slog.Logger
	grpc     *grpc.Server
	lock     *socketLock
	gate     *gate
	pools    *poolCollector // nil in cluster mode
	http     *http.Server
	httpAddr string
	draining atomic.Bool
	calls    atomic.Int64  // calls being served
	served   chan struct{} // closed when Serve has returned
	serveErr error         // Serve's error, set before served is closed

	stopOnce sync.Once
	stopErr  error
}

// Start listens on the socket (and the metrics address) and serves in the
// background until Stop.
func Start(o Options) (*Daemon, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	acc, err := newAccess(o.Allow)
	if err != nil {
		return nil, fmt.Errorf("--allow-uid: %w", err)
	}
	if _, err := store.PrepareDataDir(o.DataDir); err != nil {
		return nil, err
	}
	m := newMetrics()
	d := &Daemon{log: log, served: make(chan struct{})}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "requests_in_flight", Help: "IPAM calls being served.",
	}, func() float64 { return float64(d.calls.Load()) }))
	srv, err := ipamrpc.NewServer(ipamrpc.ServerOptions{Allocator: o.IPAM, DataDir: o.DataDir, Version: o.Version, Observer: m, Log: log})
	if err != nil {
		return nil, err
	}
	if o.IPAM == nil {
		d.pools = newPoolCollector(func() (map[string][]ipamrpc.PoolUsage, error) {
			return ipamrpc.PoolSnapshot(o.DataDir, log)
		})
		m.reg.MustRegister(d.pools)
	}
	if o.MetricsAddr != "" {
		if err := d.startMetrics(o.MetricsAddr, m); err != nil {
			return nil, err
		}
	}
	lis, lock, err := listen(o.Socket, acc.shared())
	if err != nil {
		return nil, errors.Join(err, d.stopMetrics(context.Background()))
	}
	d.lock = lock
	d.gate = newGate(lis, gateOptions{Limits: o.Limits, Access: acc, Log: log, Refused: m.connRefused})
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "connections", Help: "Connections pierd holds on its socket.",
	}, func() float64 { return float64(d.gate.open()) }))
	d.grpc = grpc.NewServer(
		grpc.Creds(peerCreds{}),
		// What the plugins' client relies on instead of flow control.
		grpc.InitialWindowSize(lite.ServerWindow), grpc.InitialConnWindowSize(lite.ServerWindow),
		grpc.MaxRecvMsgSize(lite.MaxRequest),
		// One call at a time is what a plugin makes; pierctl a few.
		grpc.MaxConcurrentStreams(maxStreams),
		grpc.ChainUnaryInterceptor(d.count, m.observe(), acc.authorize, defaultDeadline),
	)
	ipamv1grpc.RegisterIPAMServer(d.grpc, srv)
	go func() {
		d.serveErr = d.grpc.Serve(d.gate)
		close(d.served)
	}()
	log.Info("pierd serving", "socket", o.Socket, "dataDir", o.DataDir, "metrics", d.httpAddr, "allow", o.Allow, "limits", d.gate.limits)
	return d, nil
}

func (d *Daemon) startMetrics(addr string, m *metrics) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics address: %w", err)
	}
	d.httpAddr = lis.Addr().String()
	if ap, err := netip.ParseAddrPort(d.httpAddr); err == nil && !ap.Addr().IsLoopback() {
		d.log.Warn("serving /metrics without authentication beyond this host", "addr", d.httpAddr)
	}
	d.http = &http.Server{Handler: m.handler(&d.draining), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	go func() {
		if err := d.http.Serve(netutil.LimitListener(lis, maxMetricsConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server stopped", "err", err)
		}
	}()
	return nil
}

// MetricsAddr is the metrics listener's address ("" when disabled), with
// the port chosen when the option asked for port 0.
func (d *Daemon) MetricsAddr() string { return d.httpAddr }

// Done is closed when serving has stopped, on its own or by Stop; Err
// then says why.
func (d *Daemon) Done() <-chan struct{} { return d.served }

// Err is the reason serving stopped, once Done is closed.
func (d *Daemon) Err() error { return d.serveErr }

// Stop drains in-flight calls until ctx ends, then cuts what is left,
// closes the metrics listener and releases the socket. Later calls return
// the first one's result.
func (d *Daemon) Stop(ctx context.Context) error {
	d.stopOnce.Do(func() { d.stopErr = d.stop(ctx) })
	return d.stopErr
}

func (d *Daemon) stop(ctx context.Context) error {
	d.draining.Store(true)
	drained := make(chan struct{})
	go func() {
		d.grpc.GracefulStop() // closes the listener (unlinking the socket), waits for calls
		close(drained)
	}()
	select {
	case <-drained:
	case <-ctx.Done():
		d.log.Warn("drain deadline passed; cutting the calls still running")
		d.grpc.Stop()
		<-drained
	}
	<-d.served // Serve has closed the listener: the socket is gone
	return errors.Join(d.stopMetrics(ctx), d.lock.release())
}

func (d *Daemon) stopMetrics(ctx context.Context) error {
	if d.http == nil {
		return nil
	}
	if err := d.http.Shutdown(ctx); err != nil {
		return errors.Join(err, d.http.Close())
	}
	return nil
}

// count keeps d.calls.
func (d *Daemon) count(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	d.calls.Add(1)
	defer d.calls.Add(-1)
	return handler(ctx, req)
}

// defaultDeadline gives a call without a deadline DefaultCallTimeout.
func defaultDeadline(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	return handler(ctx, req)
}
