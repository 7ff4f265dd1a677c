package netpol

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// DataPlane is where the engine's decisions go: table inet pier of the
// node (dataplane.DataPlane), or a recorder in tests.
type DataPlane interface {
	// Apply makes one event's change.
	Apply(dataplane.Delta) error
	// Resync makes the kernel hold exactly the state; it returns the pod
	// chains it could not remove yet.
	Resync(dataplane.State) ([]dataplane.PodChain, error)
	// RemovePods removes pod chains nothing leads to and returns the rest.
	RemovePods([]dataplane.PodChain) ([]dataplane.PodChain, error)
}

// Config is what an engine needs. A daemon in the node's namespace also
// calls dataplane.EnableBridgeNetfilter once before Start (the engine does
// not: it may write into another namespace than the one it runs in, and
// sysctls are the running thread's).
type Config struct {
	// NodeName is the node whose pods' policies this engine enforces.
	NodeName  string
	DataPlane DataPlane
	Log       *slog.Logger
}

// Engine holds every Pod, Namespace and NetworkPolicy of the cluster (fed
// by informers, or by tests) and keeps the node's data plane in step with
// them: each event becomes one Delta. Its methods are safe for concurrent
// use; they are serialised, and so are the data plane's writes.
type Engine struct {
	mu  sync.Mutex // guards everything below
	cfg Config
	// started: events before Start only update memory; Start writes all.
	started bool
	// dirty: an Apply failed, so the kernel may differ from memory; the
	// next event or Tick resyncs instead of applying a delta.
	dirty bool

	pods       map[dataplane.Ref]*podState
	byAddr     map[netip.Addr]map[dataplane.Ref]*podState // pods that can be peers, by address
	byNS       map[string]map[dataplane.Ref]*podState
	namespaces map[string]labels.Set
	policies   map[dataplane.Ref]*policy
	policyNS   map[string]map[dataplane.Ref]*policy // the same, by namespace
	sets       map[string]*selectorSet              // by set name
	ports      map[string]*portSet                  // by port name
	// chains are the local pods' chains as installed (or to install).
	chains map[chainKey]dataplane.PodChain
	// stale are chains of gone pods still to remove.
	stale []dataplane.PodChain
}

type chainKey struct {
	pod dataplane.Ref
	dir dataplane.Direction
}

var directions = []dataplane.Direction{dataplane.Ingress, dataplane.Egress}

// New returns an engine that writes nothing until Start.
func New(cfg Config) *Engine {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Engine{
		cfg:        cfg,
		pods:       map[dataplane.Ref]*podState{},
		byAddr:     map[netip.Addr]map[dataplane.Ref]*podState{},
		byNS:       map[string]map[dataplane.Ref]*podState{},
		namespaces: map[string]labels.Set{},
		policies:   map[dataplane.Ref]*policy{},
		policyNS:   map[string]map[dataplane.Ref]*policy{},
		sets:       map[string]*selectorSet{},
		ports:      map[string]*portSet{},
		chains:     map[chainKey]dataplane.PodChain{},
	}
}

// Start writes the whole state (a resync) and from then on applies each
// event as it comes. Call it once the informers have synced, so the first
// write already holds every policy.
func (e *Engine) Start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = true
	return e.resyncLocked()
}

// Resync rewrites the data plane from memory: after the table was
// flushed, or to repair drift.
func (e *Engine) Resync() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started {
		return nil
	}
	return e.resyncLocked()
}

// Tick does the background work: a resync when an Apply failed, and
// removing chains of gone pods once nothing leads to them. Call it now
// and then (pierd does every few seconds).
func (e *Engine) Tick() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started {
		return nil
	}
	if e.dirty {
		return e.resyncLocked()
	}
	return e.removePods(nil)
}

// Run calls Tick every interval until ctx ends, logging failures: the
// background half of an engine in a daemon.
func (e *Engine) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := e.Tick(); err != nil {
				e.cfg.Log.Warn("network policy: background resync failed; retrying", "err", err, "in", interval)
			}
		}
	}
}

// removePods removes the chains of gone pods (more, and those left from
// before) that no element leads to any more. A chain a pod of the same
// name has taken over since is not removed.
func (e *Engine) removePods(more []dataplane.PodChain) error {
	seen := map[string]bool{}
	for _, c := range e.chains {
		seen[c.Name()] = true // wanted
	}
	var todo []dataplane.PodChain
	for _, c := range append(e.stale, more...) {
		if seen[c.Name()] {
			continue
		}
		seen[c.Name()] = true
		todo = append(todo, c)
	}
	e.stale = nil
	if len(todo) == 0 {
		return nil
	}
	left, err := e.cfg.DataPlane.RemovePods(todo)
	e.stale = left
	return err
}

func (e *Engine) resyncLocked() error {
	left, err := e.cfg.DataPlane.Resync(e.state())
	if err != nil {
		e.dirty = true
		return err
	}
	e.dirty, e.stale = false, left
	return nil
}

// apply sends one event's change: nothing before Start, a resync when the
// kernel may have drifted or the delta fails.
func (e *Engine) apply(ch *change) error {
	if !e.started {
		return nil
	}
	if e.dirty {
		return e.resyncLocked()
	}
	d := ch.delta()
	if d.Empty() && len(ch.gone) == 0 {
		return nil
	}
	if err := e.cfg.DataPlane.Apply(d); err != nil {
		e.cfg.Log.Warn("network policy update failed; rewriting all", "err", err)
		if rerr := e.resyncLocked(); rerr != nil {
			return errors.Join(err, rerr)
		}
		return nil
	}
	if len(ch.gone) > 0 {
		return e.removePods(ch.gone)
	}
	return nil
}

// SetPod adds or updates a Pod.
func (e *Engine) SetPod(p *corev1.Pod) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.setPod(dataplane.Ref{Namespace: p.Namespace, Name: p.Name}, podFrom(p))
}

// DeletePod forgets a Pod.
func (e *Engine) DeletePod(namespace, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.setPod(dataplane.Ref{Namespace: namespace, Name: name}, nil)
}

func (e *Engine) setPod(ref dataplane.Ref, now *podState) error {
	old := e.pods[ref]
	var addrs []netip.Addr
	if old != nil {
		addrs = append(addrs, old.addrs...)
	}
	if now != nil {
		addrs = append(addrs, now.addrs...)
	}
	before := e.localOwners(addrs)
	e.unindex(old)
	e.index(now)
	ch := newChange()
	e.refreshMembers(ch, addrs, nil)
	node := e.cfg.NodeName
	if old.localTo(node) || now.localTo(node) {
		e.refreshLocal(ch, ref)
	}
	ch.d.Pointers, ch.d.Unpoint = pointerChanges(before, e.localOwners(addrs))
	return e.apply(ch)
}

// localOwners are the local pods the addresses lead to (localOwner).
func (e *Engine) localOwners(addrs []netip.Addr) map[netip.Addr]dataplane.Ref {
	out := map[netip.Addr]dataplane.Ref{}
	for _, a := range addrs {
		if ref, ok := e.localOwner(a); ok {
			out[a] = ref
		}
	}
	return out
}

// pointerChanges: an address whose local owner is new is pointed at that
// pod's chains; an address that no longer leads to a pod loses the
// elements pierd may have added for that pod.
func pointerChanges(before, after map[netip.Addr]dataplane.Ref) (add, remove []dataplane.Pointer) {
	for _, a := range slices.SortedFunc(maps.Keys(after), netip.Addr.Compare) {
		if b, ok := before[a]; !ok || b != after[a] {
			add = append(add, dataplane.Pointer{Addr: a, Pod: after[a]})
		}
	}
	for _, a := range slices.SortedFunc(maps.Keys(before), netip.Addr.Compare) {
		if n, ok := after[a]; !ok || n != before[a] {
			remove = append(remove, dataplane.Pointer{Addr: a, Pod: before[a]})
		}
	}
	return add, remove
}

func (e *Engine) index(p *podState) {
	if p == nil {
		return
	}
	e.pods[p.ref] = p
	if e.byNS[p.ref.Namespace] == nil {
		e.byNS[p.ref.Namespace] = map[dataplane.Ref]*podState{}
	}
	e.byNS[p.ref.Namespace][p.ref] = p
	if !p.peer() {
		return
	}
	for _, a := range p.addrs {
		if e.byAddr[a] == nil {
			e.byAddr[a] = map[dataplane.Ref]*podState{}
		}
		e.byAddr[a][p.ref] = p
	}
}

func (e *Engine) unindex(p *podState) {
	if p == nil {
		return
	}
	delete(e.pods, p.ref)
	delete(e.byNS[p.ref.Namespace], p.ref)
	if len(e.byNS[p.ref.Namespace]) == 0 {
		delete(e.byNS, p.ref.Namespace)
	}
	for _, a := range p.addrs {
		delete(e.byAddr[a], p.ref)
		if len(e.byAddr[a]) == 0 {
			delete(e.byAddr, a)
		}
	}
}

// SetNamespace adds or updates a Namespace: its labels decide which
// namespaceSelectors pick its pods.
func (e *Engine) SetNamespace(ns *corev1.Namespace) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.setNamespace(ns.Name, namespaceLabels(ns.Name, ns.Labels))
}

// DeleteNamespace forgets a Namespace's labels (its pods go by their own
// events).
func (e *Engine) DeleteNamespace(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.setNamespace(name, nil)
}

func (e *Engine) setNamespace(name string, l labels.Set) error {
	old := e.nsLabels(name)
	if l == nil {
		delete(e.namespaces, name)
	} else {
		e.namespaces[name] = l
	}
	if labels.Equals(old, e.nsLabels(name)) {
		return nil
	}
	var addrs []netip.Addr
	for _, p := range e.byNS[name] {
		addrs = append(addrs, p.addrs...)
	}
	ch := newChange()
	e.refreshMembers(ch, addrs, func(s *selectorSet) bool { return s.sel.nsSel != nil })
	return e.apply(ch)
}

// nsLabels are a namespace's labels, or, before its object arrives, the
// name label the API server gives every namespace.
func (e *Engine) nsLabels(name string) labels.Set {
	if l, ok := e.namespaces[name]; ok {
		return l
	}
	return namespaceLabels(name, nil)
}

// SetPolicy adds or updates a NetworkPolicy. Parts of it that cannot be
// compiled match nothing (and are reported in the error, after the rest
// was applied).
func (e *Engine) SetPolicy(np *networkingv1.NetworkPolicy) error {
	pol, cerr := compile(np)
	e.mu.Lock()
	defer e.mu.Unlock()
	if old := e.policies[pol.ref]; old != nil && old.fingerprint == pol.fingerprint {
		return cerr
	}
	return errors.Join(cerr, e.setPolicy(pol.ref, pol))
}

// DeletePolicy forgets a NetworkPolicy.
func (e *Engine) DeletePolicy(namespace, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	ref := dataplane.Ref{Namespace: namespace, Name: name}
	if e.policies[ref] == nil {
		return nil
	}
	return e.setPolicy(ref, nil)
}

func (e *Engine) setPolicy(ref dataplane.Ref, pol *policy) error {
	old := e.policies[ref]
	ch := newChange()
	if pol != nil {
		for _, s := range pol.selectors {
			e.refSelector(ch, s)
		}
		for _, n := range pol.portNames {
			e.refPort(ch, n)
		}
		e.policies[ref] = pol
		if e.policyNS[ref.Namespace] == nil {
			e.policyNS[ref.Namespace] = map[dataplane.Ref]*policy{}
		}
		e.policyNS[ref.Namespace][ref] = pol
	} else {
		delete(e.policies, ref)
		delete(e.policyNS[ref.Namespace], ref)
		if len(e.policyNS[ref.Namespace]) == 0 {
			delete(e.policyNS, ref.Namespace)
		}
	}
	for _, d := range directions {
		switch {
		case pol != nil && pol.dirs[d]:
			ch.d.Policies = append(ch.d.Policies, dataplane.PolicyChain{Policy: ref, Dir: d, Rules: pol.rules[d]})
		case old != nil && old.dirs[d]:
			ch.d.RemovePolicies = append(ch.d.RemovePolicies, dataplane.PolicyChain{Policy: ref, Dir: d})
		}
	}
	for r, p := range e.byNS[ref.Namespace] {
		if p.localTo(e.cfg.NodeName) {
			e.refreshLocal(ch, r)
		}
	}
	if old != nil {
		for _, s := range old.selectors {
			e.unrefSelector(ch, s.setName())
		}
		for _, n := range old.portNames {
			e.unrefPort(ch, n)
		}
	}
	return e.apply(ch)
}

// refreshLocal recomputes a local pod's chains and records the ones that
// changed.
func (e *Engine) refreshLocal(ch *change, ref dataplane.Ref) {
	p := e.pods[ref]
	for _, d := range directions {
		key := chainKey{ref, d}
		have, installed := e.chains[key]
		if !p.localTo(e.cfg.NodeName) {
			if installed {
				delete(e.chains, key)
				gone := dataplane.PodChain{Pod: ref, Dir: d, Verdict: dataplane.Gone}
				ch.d.Pods = append(ch.d.Pods, gone)
				ch.gone = append(ch.gone, gone)
			}
			continue
		}
		want := e.podChain(p, d)
		if installed && samePodChain(have, want) {
			continue
		}
		e.chains[key] = want
		ch.d.Pods = append(ch.d.Pods, want)
	}
}

// podChain is what a local pod's chain of direction d must do: isolated
// when any policy of its namespace selects it for d.
func (e *Engine) podChain(p *podState, d dataplane.Direction) dataplane.PodChain {
	c := dataplane.PodChain{Pod: p.ref, Dir: d, Verdict: dataplane.Open}
	if p.finished {
		c.Verdict = dataplane.Gone
		return c
	}
	for ref, pol := range e.policyNS[p.ref.Namespace] {
		if pol.dirs[d] && pol.podSel != nil && pol.podSel.Matches(p.labels) {
			c.Policies = append(c.Policies, ref)
		}
	}
	if len(c.Policies) > 0 {
		c.Verdict = dataplane.Isolated
		slices.SortFunc(c.Policies, compareRefs)
	}
	return c
}

func samePodChain(a, b dataplane.PodChain) bool {
	return a.Verdict == b.Verdict && slices.Equal(a.Policies, b.Policies)
}

func compareRefs(a, b dataplane.Ref) int {
	switch {
	case a.Namespace < b.Namespace:
		return -1
	case a.Namespace > b.Namespace:
		return 1
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}
