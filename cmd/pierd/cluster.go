package main

import (
	"errors"
	"flag"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/pier-cni/pier/internal/cluster"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// clusterOpts are the cluster-mode flags; --etcd-endpoints turns it on.
type clusterOpts struct {
	endpoints, cacert, cert, key, nodeName, nodeIP, nodeIP6 *string
	wait, grace, ttl                                        *time.Duration
}

func clusterFlags(fs *flag.FlagSet) *clusterOpts {
	return &clusterOpts{
		endpoints: fs.String("etcd-endpoints", "", "comma-separated etcd URLs: cluster mode (addresses from the cluster's blocks, routes between nodes)"),
		cacert:    fs.String("etcd-cacert", "", "CA bundle to verify etcd (TLS)"),
		cert:      fs.String("etcd-cert", "", "client certificate for etcd (TLS)"),
		key:       fs.String("etcd-key", "", "client key for etcd (TLS)"),
		nodeName:  fs.String("node-name", "", "this node's name in the cluster (default: the host name)"),
		nodeIP:    fs.String("node-ip", "", "this node's underlay IP, the next hop other nodes route its blocks to"),
		nodeIP6:   fs.String("node-ip6", "", "this node's IPv6 underlay address: the next hop of its IPv6 blocks (host-gw, dual-stack clusters)"),
		wait:      fs.Duration("etcd-wait", 30*time.Second, "how long start-up waits for etcd and the cluster settings"),
		grace:     fs.Duration("block-grace", cluster.BlockGrace, "how long an empty address block stays with this node before it is given back"),
		ttl:       fs.Duration("node-ttl", cluster.LeaseTTL*time.Second, "the node lease's TTL, whole seconds (for tests: a lapsed lease frees nothing)"),
	}
}

// start returns nil without --etcd-endpoints. bridge is the pods' bridge
// (--cni-bridge).
func (c *clusterOpts) start(dataDir, version, bridge string, log *slog.Logger) (*cluster.Cluster, error) {
	if *c.endpoints == "" {
		return nil, nil
	}
	name := *c.nodeName
	if name == "" {
		name, _ = os.Hostname()
	}
	ip, err := netip.ParseAddr(*c.nodeIP)
	if err != nil {
		return nil, errors.New("--node-ip must be an IP address")
	}
	var ip6 netip.Addr
	if *c.nodeIP6 != "" {
		if ip6, err = netip.ParseAddr(*c.nodeIP6); err != nil || !ip6.Is6() || ip6.Is4In6() {
			return nil, errors.New("--node-ip6 must be an IPv6 address")
		}
	}
	if *c.ttl < time.Second {
		return nil, errors.New("--node-ttl must be at least 1s")
	}
	// The DEL queue lives there: the same rules as the store's directory.
	if _, err := store.PrepareDataDir(dataDir); err != nil {
		return nil, err
	}
	return cluster.Start(cluster.Options{
		Etcd:     cluster.EtcdOptions{Endpoints: cluster.ParseEndpoints(*c.endpoints), CACert: *c.cacert, Cert: *c.cert, KeyPEM: *c.key},
		NodeName: name, NodeIP: ip, NodeIP6: ip6, DataDir: dataDir, Version: version, Log: log, BlockGrace: *c.grace, NodeTTL: *c.ttl,
		Bridges: []string{bridge},
	}, *c.wait)
}
