package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pier-cni/pier/internal/nodestatus"
	"github.com/pier-cni/pier/internal/routing"
)

// ModeNone routes nothing between nodes (something else does: a cloud's
// route tables, BGP).
const ModeNone = "none"

// Options configures the Kubernetes mode.
type Options struct {
	// Config reaches the API server (Connect).
	Config *rest.Config
	// NodeName is this node's Node object.
	NodeName string
	// NodeIP is the local underlay address of the vxlan device; unset: the
	// Node's first InternalIP (IPv4 first).
	NodeIP netip.Addr
	// Mode is routing.ModeHostGW, routing.ModeVXLAN or ModeNone.
	Mode string
	// ClusterCIDRs are the cluster's pod CIDRs (pierd --cluster-cidr):
	// only a Node's ranges inside them are routed (Plan). Needed unless
	// Mode is ModeNone.
	ClusterCIDRs []netip.Prefix
	// Allocator, when set, assigns ranges to the node when its spec has
	// none (--allocate-pod-cidrs); nil waits for someone else to.
	Allocator *Allocator
	// CNI is the conflist to write; its MTU, when 0, is the underlay's
	// (less the vxlan overhead).
	CNI CNIConfig
	// StatusFile, when set, receives the node's status (pierctl node).
	StatusFile string
	// DataPlane overrides the routing.Programmer made from Mode (tests).
	DataPlane DataPlane
	// Programmer, when set, is the data plane to configure and use (its
	// NetNS names the node's namespace when it is not the caller's:
	// tests); nil: one in the caller's namespace.
	Programmer *routing.Programmer
	Log        *slog.Logger
}

// Connect returns the API server's client config: from the kubeconfig
// file, or in-cluster (the pod's service account) when kubeconfig is "".
// It asks for protobuf, which lists and watches of Nodes decode several
// times faster than JSON.
func Connect(kubeconfig string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.UserAgent = "pierd"
	return cfg, nil
}

// Datastore is pierd's Kubernetes mode on one node: the node's pod ranges
// from its Node object (or claimed by the Allocator), the conflist
// written once they are known, the vxlan annotations, and the route agent
// on the other Node objects.
type Datastore struct {
	o        Options
	client   *API
	nodeInf  cache.SharedIndexInformer
	nodes    corelisters.NodeLister
	agent    *routeAgent
	prog     *routing.Programmer // nil with Options.DataPlane or ModeNone
	ownKick  chan struct{}       // this node's Node changed (keepRanges)
	vtepKick chan struct{}       // the same, for keepVTEP

	mu     sync.Mutex // guards status
	status nodestatus.Status
	// writing serialises the status file's writers (the route agent and
	// the ranges loop): each computes the status under it, so the last
	// file written is never older than another.
	writing sync.Mutex
}

// New prepares the Kubernetes mode without talking to the API server;
// Run starts it. Other components may add informers to Informers() in
// between.
func New(o Options) (*Datastore, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.NodeName == "" {
		return nil, errors.New("kubernetes mode needs the node's name")
	}
	if o.Mode != routing.ModeHostGW && o.Mode != routing.ModeVXLAN && o.Mode != ModeNone {
		return nil, fmt.Errorf("routing mode %q: want %s, %s or %s", o.Mode, routing.ModeHostGW, routing.ModeVXLAN, ModeNone)
	}
	if o.Mode != ModeNone && len(o.ClusterCIDRs) == 0 {
		return nil, fmt.Errorf("routing mode %s needs the cluster CIDRs: only Node ranges inside them are routed", o.Mode)
	}
	if o.Allocator != nil {
		if err := o.Allocator.Validate(); err != nil {
			return nil, err
		}
	}
	client, err := NewAPI(o.Config)
	if err != nil {
		return nil, err
	}
	d := &Datastore{o: o, client: client, ownKick: make(chan struct{}, 1), vtepKick: make(chan struct{}, 1)}
	if o.Allocator != nil && o.Allocator.Client == nil {
		o.Allocator.Client = client
	}
	d.nodeInf = client.NodeInformer()
	d.nodes = corelisters.NewNodeLister(d.nodeInf.GetIndexer())
	dp := o.DataPlane
	if dp == nil && o.Mode != ModeNone {
		d.prog = o.Programmer
		if d.prog == nil {
			d.prog = &routing.Programmer{}
		}
		d.prog.Mode, d.prog.Log = o.Mode, o.Log
		if o.CNI.Bridge != "" {
			d.prog.Bridges = []string{o.CNI.Bridge}
		}
		dp = d.prog
	}
	if dp == nil {
		dp = noRoutes{}
	}
	if d.agent, err = newRouteAgent(agentConfig{mode: o.Mode, self: o.NodeName, clusterCIDRs: o.ClusterCIDRs, dp: dp,
		informer: d.nodeInf, log: o.Log}); err != nil {
		return nil, err
	}
	d.agent.onSync = d.writeStatus
	_, err = d.nodeInf.AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: func(obj any) bool {
			n, ok := obj.(*corev1.Node)
			return ok && n.Name == o.NodeName
		},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { d.kickOwn() },
			UpdateFunc: func(any, any) { d.kickOwn() },
		},
	})
	d.status = nodestatus.Status{Datastore: "kubernetes", Server: o.Config.Host, Node: o.NodeName, Mode: o.Mode}
	return d, err
}

type noRoutes struct{}

func (noRoutes) Apply(routing.State) error { return nil }

func (d *Datastore) kickOwn() {
	for _, ch := range []chan struct{}{d.ownKick, d.vtepKick} {
		select {
		case ch <- struct{}{}:
		default: // a kick is pending already
		}
	}
}

// NodeInformer is the Node informer Run starts: another pierd component
// may add its event handlers before Run (they see every Node as the route
// agent does; see trim for what its cache keeps). A component that needs
// other objects (Pods, NetworkPolicies) builds its informers from the same
// rest.Config; client-go's informer factory links every API group, which
// pierd otherwise does without (see API).
func (d *Datastore) NodeInformer() cache.SharedIndexInformer { return d.nodeInf }

// Client is the API client.
func (d *Datastore) Client() *API { return d.client }

// Run runs the Kubernetes mode until ctx ends. Nothing here needs the API
// server to stay up: while it is unreachable the caches keep their last
// content, routes and the conflist stay, and pods keep starting (the
// plugin never calls the API); the informers resume when it is back.
func (d *Datastore) Run(ctx context.Context) {
	log := d.o.Log
	go d.nodeInf.RunWithContext(ctx)
	log.Info("kubernetes mode: waiting for the Node informer", "server", d.o.Config.Host, "node", d.o.NodeName)
	if !cache.WaitForCacheSync(ctx.Done(), d.nodeInf.HasSynced) {
		return
	}
	own, ok := d.waitOwn(ctx, func(n Node) bool { return d.o.NodeIP.IsValid() || n.InternalIP4.IsValid() || n.InternalIP6.IsValid() })
	if !ok {
		return
	}
	vtep := d.o.NodeIP
	if !vtep.IsValid() {
		vtep = own.InternalIP4
		if !vtep.IsValid() {
			vtep = own.InternalIP6
		}
	}
	d.agent.vtep = vtep
	mtu := d.prepareDataPlane(ctx, vtep)
	var wg sync.WaitGroup
	wg.Go(func() { d.agent.run(ctx) })
	d.keepRanges(ctx, mtu)
	wg.Wait()
}

// waitOwn waits until this node's Node object exists and ready says it is
// usable, and returns it parsed.
func (d *Datastore) waitOwn(ctx context.Context, ready func(Node) bool) (Node, bool) {
	logged := false
	for {
		if obj, err := d.nodes.Get(d.o.NodeName); err == nil {
			n, perr := ParseNode(obj)
			if perr != nil {
				d.o.Log.Warn("this node's Node object is partly unusable", "err", perr)
			}
			if ready(n) {
				return n, true
			}
		}
		if !logged {
			d.o.Log.Info("waiting for this node's Node object (and its address)", "node", d.o.NodeName)
			logged = true
		}
		select {
		case <-ctx.Done():
			return Node{}, false
		case <-d.ownKick:
		}
	}
}

// prepareDataPlane creates the vxlan device and publishes its address and
// MAC on the Node (in the background, retried while the API server does
// not take it), and returns the pods' MTU.
func (d *Datastore) prepareDataPlane(ctx context.Context, vtep netip.Addr) int {
	mtu := d.o.CNI.MTU
	if d.prog == nil {
		return mtu
	}
	d.prog.VTEP = vtep
	mac, devMTU, err := d.prog.EnsureDevice()
	if err != nil {
		d.o.Log.Error("vxlan device", "err", err)
	}
	if mtu == 0 {
		mtu = devMTU // vxlan: the underlay's less the overhead
		if d.prog.Mode == routing.ModeHostGW {
			mtu = d.prog.UnderlayMTU()
		}
	}
	if mac != nil {
		d.mu.Lock()
		d.status.VTEP, d.status.VTEPMAC = vtep, mac.String()
		d.mu.Unlock()
		go d.keepVTEP(ctx, vtep, mac.String())
	}
	return mtu
}

// keepVTEP keeps the vxlan annotations on this node's Node: written at
// start, and again whenever the Node lacks them (re-created, or edited by
// hand); a failed write is retried every few seconds.
func (d *Datastore) keepVTEP(ctx context.Context, vtep netip.Addr, mac string) {
	for {
		obj, err := d.nodes.Get(d.o.NodeName)
		if err == nil && (obj.Annotations[AnnotationVTEP] != vtep.String() || obj.Annotations[AnnotationVTEPMAC] != mac) {
			if err := d.publishVTEP(ctx, vtep, mac); err != nil {
				d.o.Log.Warn("cannot publish the vxlan VTEP on the Node; retrying", "err", err)
				d.sleep(ctx, 3*time.Second)
				d.kickOwn()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-d.vtepKick:
		}
	}
}

func (d *Datastore) publishVTEP(ctx context.Context, vtep netip.Addr, mac string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		AnnotationVTEP: vtep.String(), AnnotationVTEPMAC: mac}}})
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := d.client.PatchNode(pctx, d.o.NodeName, patch); err != nil {
		return err
	}
	d.o.Log.Info("vxlan VTEP published", "vtep", vtep, "mac", mac)
	return nil
}

// keepRanges learns this node's pod ranges (claiming them with the
// Allocator if the Node has none), writes the conflist, and rewrites it
// whenever the ranges change (a Node re-created with others), until ctx
// ends.
func (d *Datastore) keepRanges(ctx context.Context, mtu int) {
	cni := d.o.CNI
	cni.MTU = mtu
	var current []netip.Prefix
	for {
		n, ok := d.waitOwn(ctx, func(Node) bool { return true })
		if !ok {
			return
		}
		source := "spec.podCIDRs of Node " + d.o.NodeName
		if len(n.PodCIDRs) == 0 && d.o.Allocator != nil {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			ranges, err := d.o.Allocator.Assign(actx, d.o.NodeName)
			cancel()
			if err != nil {
				d.o.Log.Warn("cannot assign this node's pod ranges; retrying", "err", err)
				d.sleep(ctx, 3*time.Second)
				d.kickOwn()
				continue
			}
			n.PodCIDRs, source = ranges, "assigned by pierd from "+fmt.Sprint(d.o.Allocator.ClusterCIDRs)
		}
		if len(n.PodCIDRs) > 0 && !slices.Equal(n.PodCIDRs, current) {
			d.writeConflist(cni, n.PodCIDRs, source, current)
			current = n.PodCIDRs
		}
		if len(n.PodCIDRs) == 0 {
			d.o.Log.Info("waiting for this node's pod ranges (spec.podCIDRs)", "node", d.o.NodeName)
		}
		select {
		case <-ctx.Done():
			return
		case <-d.ownKick:
		}
	}
}

func (d *Datastore) writeConflist(cni CNIConfig, ranges []netip.Prefix, source string, old []netip.Prefix) {
	for _, r := range ranges {
		if len(cni.NonMasquerade) > 0 && !slices.ContainsFunc(cni.NonMasquerade, func(c netip.Prefix) bool { return c.Contains(r.Addr()) && c.Bits() <= r.Bits() }) {
			d.o.Log.Warn("this node's pod range lies outside the cluster CIDRs: its traffic to other nodes is masqueraded", "range", r, "clusterCIDRs", cni.NonMasquerade)
		}
	}
	wrote, err := cni.Write(ranges)
	switch {
	case err != nil:
		d.o.Log.Error("cannot write the CNI config", "path", cni.Path(), "err", err)
		return
	case wrote && old != nil:
		d.o.Log.Warn("this node's pod ranges changed: new pods get addresses from the new ones; running pods keep theirs", "old", old, "new", ranges, "conflist", cni.Path())
	case wrote:
		d.o.Log.Info("CNI config written", "path", cni.Path(), "ranges", ranges, "mtu", cni.MTU)
	}
	d.mu.Lock()
	d.status.PodCIDRs, d.status.PodCIDRSource, d.status.Conflist = ranges, source, cni.Path()
	d.mu.Unlock()
	d.writeStatus()
}

func (d *Datastore) sleep(ctx context.Context, t time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(t):
	}
}

// RestoreGuard puts the VXLAN guard back after Pier's table was flushed
// (routing.Programmer.RestoreGuard); nothing when the data plane is not
// the kernel's (ModeNone, tests).
func (d *Datastore) RestoreGuard() error {
	if d.prog == nil {
		return nil
	}
	return d.prog.RestoreGuard()
}

// Status returns what the node's status file holds.
func (d *Datastore) Status() nodestatus.Status {
	d.mu.Lock()
	s := d.status
	d.mu.Unlock()
	d.agent.fill(&s)
	return s
}

func (d *Datastore) writeStatus() {
	if d.o.StatusFile == "" {
		return
	}
	d.writing.Lock()
	defer d.writing.Unlock()
	if err := nodestatus.Write(d.o.StatusFile, d.Status()); err != nil {
		d.o.Log.Warn("cannot write the node status file", "path", d.o.StatusFile, "err", err)
	}
}
