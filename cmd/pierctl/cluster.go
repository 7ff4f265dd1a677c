package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pier-cni/pier/internal/cluster"
	"github.com/pier-cni/pier/internal/config"
)

// etcdFlags are the flags of the commands that talk to etcd.
type etcdFlags struct {
	endpoints, cacert, cert, key *string
}

func addEtcdFlags(fs *flag.FlagSet) etcdFlags {
	return etcdFlags{
		endpoints: fs.String("etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd URLs"),
		cacert:    fs.String("etcd-cacert", "", "CA bundle to verify etcd (TLS)"),
		cert:      fs.String("etcd-cert", "", "client certificate (TLS)"),
		key:       fs.String("etcd-key", "", "client key (TLS)"),
	}
}

func (f etcdFlags) connect() (*clientv3.Client, error) {
	return cluster.Connect(cluster.EtcdOptions{Endpoints: cluster.ParseEndpoints(*f.endpoints), CACert: *f.cacert, Cert: *f.cert, KeyPEM: *f.key})
}

func clusterCommand() command {
	return command{
		name: "cluster", args: "init --cidr CIDR[,CIDR6]",
		summary: "write the cluster-mode settings into etcd (once)",
		help: `init writes /pier/config: the cluster CIDRs (one IPv4, optionally one
IPv6), the block size each node claims at a time (default /26 and /122) and
the routing mode between nodes (host-gw: nodes on one link; vxlan: any IP
network). Running it again with the same settings is a no-op; different
settings are refused.`,
		setup: func(fs *flag.FlagSet) runner {
			ef := addEtcdFlags(fs)
			cidrs := fs.String("cidr", "", "cluster CIDRs, comma-separated")
			b4 := fs.Int("block-size", cluster.DefaultBlock4, "IPv4 block prefix length")
			b6 := fs.Int("block-size6", cluster.DefaultBlock6, "IPv6 block prefix length")
			mode := fs.String("mode", cluster.ModeHostGW, "host-gw or vxlan")
			return func(e *env, args []string) int {
				if len(args) != 1 || args[0] != "init" {
					return usageError(e, "cluster", "want 'init'")
				}
				cfg := cluster.Config{BlockSize4: *b4, BlockSize6: *b6, Mode: *mode}
				for _, s := range strings.Split(*cidrs, ",") {
					p, err := netip.ParsePrefix(strings.TrimSpace(s))
					if err != nil {
						return usageError(e, "cluster", "--cidr: %v", err)
					}
					cfg.CIDRs = append(cfg.CIDRs, p)
				}
				cli, err := ef.connect()
				if err != nil {
					return fail(e, "cluster", err)
				}
				defer cli.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := cluster.InitConfig(ctx, cli, cfg); err != nil {
					return fail(e, "cluster", err)
				}
				fmt.Fprintf(e.stdout, "cluster initialised: %v, blocks /%d (/%d), mode %s\n", cfg.CIDRs, cfg.BlockSize4, cfg.BlockSize6, cfg.Mode)
				return exitOK
			}
		},
	}
}

func nodeCommand() command {
	return command{
		name: "node", args: "[show] | forget NAME",
		summary: "show the node's pod ranges and routes to other nodes; forget a dead node (cluster mode)",
		help: `show (the default) prints what pierd knows of this node when it routes
between nodes (--datastore kubernetes): the node's pod ranges and where they
come from, the CNI config pierd wrote, the routing mode, and every route to
another node's range with the node it leads to, checked against the
kernel's route table (main table, protocol 80): "ok", "missing" (pierd
wants it, the kernel lacks it) or "differs"; routes of protocol 80 that
pierd does not want are listed as "stale". Ranges that are not routed are
listed with the reason. It reads pierd's status file beside --socket.

forget is for a node that is gone for good (cluster mode, etcd): every
address its blocks hold is released, its blocks are deleted (other nodes
may claim them) and its node key removed. A node whose pierd merely died
keeps its blocks until then, so that its running containers' addresses are
never handed out twice.`,
		setup: func(fs *flag.FlagSet) runner {
			ef := addEtcdFlags(fs)
			socket := fs.String("socket", config.DefaultDaemonSocket, "show: the socket of the pierd whose status to read")
			out := outputFlag(fs)
			return func(e *env, args []string) int {
				switch {
				case len(args) == 0 || (len(args) == 1 && args[0] == "show"):
					return nodeShow(e, *socket, *out)
				case len(args) == 2 && args[0] == "forget":
					return nodeForget(e, ef, args[1])
				}
				return usageError(e, "node", "want 'show' or 'forget NAME'")
			}
		},
	}
}

func nodeForget(e *env, ef etcdFlags, name string) int {
	cli, err := ef.connect()
	if err != nil {
		return fail(e, "node", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, blocks, err := cluster.Forget(ctx, cli, name)
	if err != nil {
		return fail(e, "node", err)
	}
	fmt.Fprintf(e.stdout, "node %s forgotten: %d addresses released, %d blocks freed\n", name, addrs, blocks)
	return exitOK
}
