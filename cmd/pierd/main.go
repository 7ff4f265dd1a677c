// Command pierd is Pier's node daemon: the IPAM service over gRPC on a unix
// socket (daemon mode: "ipam": {"type": "pier-ipam", "daemonSocket": …}),
// with Prometheus metrics. With --etcd-endpoints it runs in cluster mode
// (package cluster: addresses from the cluster's blocks in etcd, routes to
// the other nodes' blocks); with --datastore kubernetes in Kubernetes mode
// (package kube: the node's pod ranges from its Node object, routes from
// the other Node objects, the CNI config written once the ranges are
// known; with --network-policy the cluster's NetworkPolicies enforced on
// the node's pods, package netpol). SIGTERM or SIGINT drains in-flight
// calls and exits.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/pierd"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("pierd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", pierd.DefaultSocket, "unix socket to serve the IPAM API on")
	dataDir := fs.String("data-dir", pierd.DefaultDataDir, "where reservations are kept (the local store's layout)")
	metrics := fs.String("metrics-addr", pierd.DefaultMetricsAddr, "address for /metrics and /healthz; empty disables")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	access := addAccessFlags(fs)
	drain := fs.Duration("drain-timeout", pierd.DefaultDrainTimeout, "how long SIGTERM waits for in-flight calls")
	procSys := fs.String("proc-sys", "/proc/sys", "where pierd reads and writes the node's sysctls: /proc/sys, or, in a container whose /proc/sys is read-only, the directory under which the host's /proc/sys/net is mounted as net")
	cf := clusterFlags(fs)
	rf := restoreFlagSet(fs)
	kf := kubeFlags(fs, cf)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level, err := config.ParseLogLevel(*logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "pierd: --log-level: %v\n", err)
		return 2
	}
	limits, err := access.limits()
	if err != nil {
		fmt.Fprintf(stderr, "pierd: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	reportPreflight(*procSys, log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	opts := pierd.Options{
		Socket: *socket, DataDir: *dataDir, MetricsAddr: *metrics, Allow: access.grants, Limits: limits,
		Version: version(), Log: log,
	}
	km, err := kf.start(*socket, *dataDir, *procSys, log)
	if err != nil {
		fmt.Fprintf(stderr, "pierd: kubernetes mode: %v\n", err)
		return 1
	}
	defer km.stop()
	cl, err := cf.start(*dataDir, opts.Version, *kf.bridgeN, log)
	if err != nil {
		fmt.Fprintf(stderr, "pierd: cluster mode: %v\n", err)
		return 1
	}
	if cl != nil {
		defer cl.Close()
		opts.IPAM = cl
	}
	d, err := pierd.Start(opts)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	resyncs := km.resyncs()
	if cl != nil {
		resyncs["vxlan guard"] = func(context.Context) error { return cl.RestoreGuard() }
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer rf.start(wctx, *dataDir, *socket, log, resyncs)()
	defer stopWatch()
	select {
	case <-ctx.Done():
		log.Info("draining", "timeout", *drain)
	case <-d.Done():
		log.Error("serving stopped", "err", d.Err())
	}
	dctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	if err := d.Stop(dctx); err != nil {
		log.Error("stop", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}
