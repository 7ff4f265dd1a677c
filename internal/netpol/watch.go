package netpol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/tools/cache"
)

// Informers are the engine's feed: informers on every Pod, Namespace and
// NetworkPolicy of the cluster, not started yet. The caller builds them
// (pierd over a REST client that knows only the groups it reads, rather
// than client-go's informer factory, whose package registers every API
// group at start); Watch runs them.
type Informers struct {
	Pods, Namespaces, Policies cache.SharedIndexInformer
}

// Watch registers the engine's handlers on the informers, with a
// transform that trims the cached Pods to what the engine reads (TrimPod:
// nothing else may read these informers' Pods), and returns a function
// that runs it all: it starts the informers, waits for their caches,
// writes everything once (Start) and then ticks every tickEvery until ctx
// ends. Events before the caches are synced only fill the engine's
// memory, so the first write already holds every policy.
func Watch(inf Informers, e *Engine, log *slog.Logger, tickEvery time.Duration) (run func(ctx context.Context) error, err error) {
	h := handlers{e: e, log: log}
	if inf.Pods == nil || inf.Namespaces == nil || inf.Policies == nil {
		return nil, errors.New("network policy: an informer is missing")
	}
	if err := inf.Pods.SetTransform(TrimPod); err != nil {
		return nil, fmt.Errorf("network policy: trim pods: %w", err)
	}
	regs := []struct {
		what     string
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandlerFuncs
	}{
		{"pods", inf.Pods, h.pods()},
		{"namespaces", inf.Namespaces, h.namespaces()},
		{"networkpolicies", inf.Policies, h.policies()},
	}
	var synced []cache.InformerSynced
	for _, r := range regs {
		if _, err := r.informer.AddEventHandler(r.handler); err != nil {
			return nil, fmt.Errorf("network policy: watch %s: %w", r.what, err)
		}
		synced = append(synced, r.informer.HasSynced)
	}
	return func(ctx context.Context) error {
		for _, r := range regs {
			go r.informer.RunWithContext(ctx)
		}
		if !cache.WaitForCacheSync(ctx.Done(), synced...) {
			return errors.New("network policy: the caches did not sync before the end")
		}
		if err := e.Start(); err != nil {
			// Tick retries the resync; the engine is usable meanwhile.
			log.Error("network policy: first write failed; retrying", "err", err)
		}
		e.Run(ctx, tickEvery)
		return nil
	}, nil
}

// handlers turn informer events into engine calls. An engine error (the
// kernel refused a change and the resync failed too) is logged: the
// engine retries on its next tick, and the informer must go on.
type handlers struct {
	e   *Engine
	log *slog.Logger
}

func (h handlers) report(what string, err error) {
	if err != nil {
		h.log.Warn("network policy: "+what, "err", err)
	}
}

func (h handlers) pods() cache.ResourceEventHandlerFuncs {
	set := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok {
			h.report("pod "+p.Namespace+"/"+p.Name, h.e.SetPod(p))
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(obj any) {
			if p, ok := tombstone(obj).(*corev1.Pod); ok {
				h.report("pod "+p.Namespace+"/"+p.Name+" deleted", h.e.DeletePod(p.Namespace, p.Name))
			}
		},
	}
}

func (h handlers) namespaces() cache.ResourceEventHandlerFuncs {
	set := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			h.report("namespace "+ns.Name, h.e.SetNamespace(ns))
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(obj any) {
			if ns, ok := tombstone(obj).(*corev1.Namespace); ok {
				h.report("namespace "+ns.Name+" deleted", h.e.DeleteNamespace(ns.Name))
			}
		},
	}
}

func (h handlers) policies() cache.ResourceEventHandlerFuncs {
	set := func(obj any) {
		if np, ok := obj.(*networkingv1.NetworkPolicy); ok {
			h.report("policy "+np.Namespace+"/"+np.Name, h.e.SetPolicy(np))
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(obj any) {
			if np, ok := tombstone(obj).(*networkingv1.NetworkPolicy); ok {
				h.report("policy "+np.Namespace+"/"+np.Name+" deleted", h.e.DeletePolicy(np.Namespace, np.Name))
			}
		},
	}
}

// tombstone unwraps the object of a delete the informer learnt of only
// by relisting.
func tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}
