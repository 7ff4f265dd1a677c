package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/pier-cni/pier/internal/kube"
	"github.com/pier-cni/pier/internal/netpol"
	"github.com/pier-cni/pier/internal/nodestatus"
	"github.com/pier-cni/pier/internal/routing"
)

// Datastores (--datastore).
const (
	datastoreLocal      = "local"
	datastoreEtcd       = "etcd"
	datastoreKubernetes = "kubernetes"
)

// kubeOpts are the Kubernetes-mode flags; --datastore kubernetes turns it
// on. --node-name and --node-ip are cluster mode's, shared.
type kubeOpts struct {
	cluster                         *clusterOpts
	datastore, kubeconfig, routing  *string
	clusterCIDR                     *string
	allocate, ipMasq, daemonIPAM    *bool
	networkPolicy                   *bool
	mask4, mask6, mtu               *int
	confDir, confFile, net, bridgeN *string
}

func kubeFlags(fs *flag.FlagSet, c *clusterOpts) *kubeOpts {
	return &kubeOpts{
		cluster:       c,
		datastore:     fs.String("datastore", "", "where the node's pod ranges and the other nodes come from: local (this node alone), etcd (cluster mode, implied by --etcd-endpoints) or kubernetes (Node objects)"),
		kubeconfig:    fs.String("kubeconfig", "", "kubernetes: kubeconfig file for the API server (default: in-cluster, the pod's service account)"),
		routing:       fs.String("routing", routing.ModeVXLAN, "kubernetes: routes between nodes: vxlan, host-gw (nodes share one L2 link) or none"),
		clusterCIDR:   fs.String("cluster-cidr", "", "kubernetes: the cluster's pod CIDRs, comma-separated (one per family): exempt from masquerade, the only ranges routed to other nodes (needed unless --routing none), and the source of --allocate-pod-cidrs"),
		allocate:      fs.Bool("allocate-pod-cidrs", false, "kubernetes: give this node pod ranges from --cluster-cidr when its Node has none (for clusters whose controller manager does not)"),
		mask4:         fs.Int("node-cidr-mask-size-ipv4", 24, "kubernetes: size of the IPv4 pod range --allocate-pod-cidrs gives a node"),
		mask6:         fs.Int("node-cidr-mask-size-ipv6", 64, "kubernetes: size of the IPv6 pod range --allocate-pod-cidrs gives a node"),
		ipMasq:        fs.Bool("cni-ip-masq", true, "kubernetes: masquerade pod traffic that leaves the cluster CIDRs (needs --cluster-cidr)"),
		mtu:           fs.Int("cni-mtu", 0, "kubernetes: the pods' MTU (default: the underlay's, less 50 in vxlan mode)"),
		confDir:       fs.String("cni-conf-dir", kube.DefaultCNIDir, "kubernetes: where to write the CNI config once the node's pod ranges are known"),
		confFile:      fs.String("cni-conf-file", kube.DefaultCNIFile, "kubernetes: the CNI config's file name"),
		net:           fs.String("cni-network", kube.DefaultNetworkName, "kubernetes: the CNI network's name"),
		bridgeN:       fs.String("cni-bridge", "pier0", "the pods' bridge: kubernetes mode writes it into the CNI config; the route agent (kubernetes and cluster mode) removes a pod range's old gateway from it, and from no other link"),
		daemonIPAM:    fs.Bool("cni-daemon-ipam", false, "kubernetes: the CNI config allocates through this pierd (daemon mode) instead of in the plugin (the default: pods then start while pierd is down)"),
		networkPolicy: fs.Bool("network-policy", false, "kubernetes: enforce the cluster's NetworkPolicies on this node's pods (pierd watches every Pod, Namespace and NetworkPolicy; the CNI config gets \"networkPolicy\": true; a pod pierd has not seen yet is cut off until it has)"),
	}
}

// kubeMode is a running Kubernetes mode.
type kubeMode struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ds     *kube.Datastore
	policy *netpol.Engine // nil without --network-policy
}

// resyncs are what the netfilter watcher runs after Pier's table was
// flushed, besides restoring the attachments' elements from their
// records: the route agent's VXLAN guard comes back, and the network
// policy engine rewrites its chains and sets, and moves the restored
// elements from np-unclassified to the pods' chains.
func (k *kubeMode) resyncs() map[string]func(context.Context) error {
	out := map[string]func(context.Context) error{}
	if k == nil {
		return out
	}
	out["vxlan guard"] = func(context.Context) error { return k.ds.RestoreGuard() }
	if k.policy != nil {
		out["network policy"] = func(context.Context) error { return k.policy.Resync() }
	}
	return out
}

// stop ends the Kubernetes mode and waits for it. Routes and the conflist
// stay: pods keep their connectivity and keep starting while pierd is away.
func (k *kubeMode) stop() {
	if k == nil {
		return
	}
	k.cancel()
	k.wg.Wait()
}

// start returns nil unless --datastore kubernetes. Errors of the flags and
// of the kubeconfig fail the start; the API server need not be up.
// procSys is --proc-sys.
func (k *kubeOpts) start(socket, dataDir, procSys string, log *slog.Logger) (*kubeMode, error) {
	switch *k.datastore {
	case "", datastoreLocal, datastoreEtcd:
		if *k.datastore == datastoreEtcd && *k.cluster.endpoints == "" {
			return nil, errors.New("--datastore etcd needs --etcd-endpoints")
		}
		if *k.networkPolicy {
			return nil, errors.New("--network-policy needs --datastore kubernetes (the policies come from the API server)")
		}
		return nil, nil
	case datastoreKubernetes:
	default:
		return nil, fmt.Errorf("--datastore %q: want local, etcd or kubernetes", *k.datastore)
	}
	if *k.cluster.endpoints != "" {
		return nil, errors.New("--datastore kubernetes and --etcd-endpoints exclude each other")
	}
	o, err := k.options(socket, dataDir, log)
	if err != nil {
		return nil, err
	}
	// client-go logs through klog: into pierd's log, in its format.
	klog.SetSlogLogger(o.Log)
	// A node daemon's live heap is small (1,000 trimmed Nodes are about a
	// MiB) but comes in bursts (a relist decodes every Node at once):
	// collecting at 1.5× the live heap instead of 2× keeps the resident set
	// near the live set for a little more GC work (measured with 1,000 Nodes:
	// 40 → 34 MiB resident). GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	d, err := kube.New(o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &kubeMode{cancel: cancel, ds: d}
	if *k.networkPolicy {
		if m.policy, err = startPolicy(ctx, &m.wg, policyStart{d: d, node: o.NodeName, procSys: procSys, log: o.Log}); err != nil {
			cancel()
			m.wg.Wait()
			return nil, err
		}
	}
	m.wg.Go(func() { d.Run(ctx) })
	return m, nil
}

func (k *kubeOpts) options(socket, dataDir string, log *slog.Logger) (kube.Options, error) {
	name := *k.cluster.nodeName
	if name == "" {
		name, _ = os.Hostname()
	}
	o := kube.Options{NodeName: name, Mode: *k.routing, StatusFile: nodestatus.PathFor(socket), Log: log.With("datastore", "kubernetes")}
	if *k.cluster.nodeIP != "" {
		ip, err := netip.ParseAddr(*k.cluster.nodeIP)
		if err != nil {
			return o, errors.New("--node-ip must be an IP address")
		}
		o.NodeIP = ip
	}
	cidrs, err := parseCIDRs(*k.clusterCIDR)
	if err != nil {
		return o, fmt.Errorf("--cluster-cidr: %w", err)
	}
	if *k.ipMasq && len(cidrs) == 0 {
		return o, errors.New("--cluster-cidr is needed to exempt pod-to-pod traffic from masquerade (or --cni-ip-masq=false)")
	}
	if o.Mode != kube.ModeNone && len(cidrs) == 0 {
		// Node objects are written by many hands: without the cluster's
		// pod CIDRs, any Node's spec.podCIDRs could route any address of
		// the node's networks (another node's, the service CIDR) away.
		return o, fmt.Errorf("--cluster-cidr is needed with --routing %s: only Node ranges inside it are routed", o.Mode)
	}
	o.ClusterCIDRs = cidrs
	if *k.allocate {
		o.Allocator = &kube.Allocator{ClusterCIDRs: cidrs, MaskSize4: *k.mask4, MaskSize6: *k.mask6, Log: o.Log}
	}
	o.CNI = kube.CNIConfig{Dir: *k.confDir, File: *k.confFile, Network: *k.net, Bridge: *k.bridgeN, MTU: *k.mtu,
		IPMasq: *k.ipMasq, NonMasquerade: cidrs, DataDir: dataDir, NetworkPolicy: *k.networkPolicy}
	if *k.daemonIPAM {
		o.CNI.DaemonSocket = socket
	}
	if o.Config, err = kube.Connect(*k.kubeconfig); err != nil {
		return o, fmt.Errorf("kubeconfig: %w", err)
	}
	return o, nil
}

func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
