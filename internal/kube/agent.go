package kube

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/pier-cni/pier/internal/nodestatus"
	"github.com/pier-cni/pier/internal/routing"
)

// ResyncEvery is how often the route agent reconciles without an event:
// it repairs routes someone else removed or changed.
const ResyncEvery = 30 * time.Second

// DataPlane is where the route agent's State goes: routing.Programmer on a
// node, a recorder in tests.
type DataPlane interface {
	Apply(routing.State) error
}

// routeAgent keeps the node's routes to the other nodes' pod ranges in
// step with the Node objects: every Node event that changes what routes
// (ranges, InternalIPs, VTEP annotations; not kubelet's status updates)
// or a deletion kicks one reconcile of the whole table. Kicks coalesce:
// 1,000 events at start are one or two reconciles.
type routeAgent struct {
	mode         string
	self         string
	clusterCIDRs []netip.Prefix // only ranges inside them are routed
	vtep         netip.Addr     // this node's VTEP (vxlan), to plan with
	dp           DataPlane
	nodes        corelisters.NodeLister
	log          *slog.Logger
	kick         chan struct{}

	// onSync runs after each reconcile (the status file's writer).
	onSync func()
	// lastSelf is this node's Node as last seen, which sync plans with
	// while the object is missing (deleted, and not yet re-created by
	// kubelet): its ranges and addresses must stay this node's, or
	// another Node could take them, and the stale-gateway sweep the
	// gateway of its live range. Only sync, one at a time, uses it.
	lastSelf Node

	mu        sync.Mutex // guards the fields below, read by fill
	routes    []nodestatus.Route
	problems  []string
	synced    time.Time
	applyErr  string
	nodeCount int
}

// agentConfig is what a route agent is made of.
type agentConfig struct {
	mode, self   string // routing mode, this node's name
	clusterCIDRs []netip.Prefix
	dp           DataPlane
	informer     cache.SharedIndexInformer // Nodes
	log          *slog.Logger
}

func newRouteAgent(c agentConfig) (*routeAgent, error) {
	inf := c.informer
	a := &routeAgent{mode: c.mode, self: c.self, clusterCIDRs: c.clusterCIDRs, dp: c.dp,
		nodes: corelisters.NewNodeLister(inf.GetIndexer()), log: c.log, kick: make(chan struct{}, 1)}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { a.trigger() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if !ok1 || !ok2 {
				a.trigger()
				return
			}
			po, _ := ParseNode(o)
			pn, _ := ParseNode(n)
			if !po.Equal(pn) {
				a.trigger()
			}
		},
		DeleteFunc: func(any) { a.trigger() },
	})
	return a, err
}

func (a *routeAgent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default: // a reconcile is pending already and will see this change
	}
}

// run reconciles on every kick and every ResyncEvery until ctx ends. The
// caller starts it once the informer has synced, so the first reconcile
// sees every node (an early one would delete the routes of nodes not yet
// listed, cutting their traffic for a moment).
func (a *routeAgent) run(ctx context.Context) {
	t := time.NewTicker(ResyncEvery)
	defer t.Stop()
	a.sync()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-t.C:
		}
		a.sync()
	}
}

// sync plans from the informer's cache and applies. With the API server
// unreachable the cache keeps its last content, so routes stay as they
// were: nothing is removed for want of an answer.
func (a *routeAgent) sync() {
	objs, err := a.nodes.List(labels.Everything())
	if err != nil {
		a.log.Warn("route agent: list nodes from the cache", "err", err)
		return
	}
	nodes := make([]Node, 0, len(objs))
	var problems []string
	self, found := Node{Name: a.self}, false
	for _, o := range objs {
		n, err := ParseNode(o)
		if err != nil {
			problems = append(problems, "node "+o.Name+": "+strings.ReplaceAll(err.Error(), "\n", "; "))
		}
		if n.Name == a.self {
			self, found = n, true
		}
		nodes = append(nodes, n)
	}
	switch {
	case found:
		a.lastSelf = self
	case a.lastSelf.Name != "":
		self = a.lastSelf
		problems = append(problems, "this node's Node object is missing: its last known ranges and addresses stay its own until it is back")
	}
	self.VTEP = a.vtep
	state, planned := Plan(a.mode, self, nodes, a.clusterCIDRs)
	problems = append(problems, planned...)
	applyErr := ""
	if err := a.dp.Apply(state); err != nil {
		applyErr = err.Error()
	}
	a.record(state, nodes, problems, applyErr)
}

// record keeps the outcome for Status and logs the problems when they
// changed since the last reconcile (not at every event).
func (a *routeAgent) record(s routing.State, nodes []Node, problems []string, applyErr string) {
	owner := map[netip.Prefix]string{}
	for _, n := range nodes {
		for _, p := range n.PodCIDRs {
			owner[p] = n.Name
		}
	}
	routes := make([]nodestatus.Route, 0, len(s.Routes))
	for _, r := range s.Routes {
		routes = append(routes, nodestatus.Route{Dst: r.Dst, Via: r.Via, Node: owner[r.Dst]})
	}
	a.mu.Lock()
	if strings.Join(problems, "\n") != strings.Join(a.problems, "\n") {
		for _, p := range problems {
			a.log.Info("route agent: " + p)
		}
	}
	if applyErr != "" && applyErr != a.applyErr {
		// Logged when it changes, as the problems are: a route the node's
		// own networks refuse stays refused at every reconcile.
		a.log.Warn("route agent: reconcile", "err", applyErr)
	}
	a.log.Debug("route agent: reconciled", "nodes", len(nodes), "routes", len(routes))
	a.routes, a.problems, a.synced, a.applyErr, a.nodeCount = routes, problems, time.Now(), applyErr, len(nodes)
	a.mu.Unlock()
	if a.onSync != nil {
		a.onSync()
	}
}

// fill copies the last reconcile's outcome into s.
func (a *routeAgent) fill(s *nodestatus.Status) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s.Routes, s.Problems, s.Synced, s.ApplyError, s.Nodes = a.routes, a.problems, a.synced, a.applyErr, a.nodeCount
}
