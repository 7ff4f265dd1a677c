package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pier-cni/pier/internal/kube"
	"github.com/pier-cni/pier/internal/netpol"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// policyTick is how often the engine repairs what a failed write left
// and removes the chains of gone pods.
const policyTick = 5 * time.Second

// policyStart is what network policy enforcement starts from.
type policyStart struct {
	d       *kube.Datastore
	node    string
	procSys string // --proc-sys
	log     *slog.Logger
}

// startPolicy runs network policy enforcement (pierd --network-policy):
// an engine on informers of every Pod, Namespace and NetworkPolicy of the
// cluster, writing the node's share into table inet pier. It fails when
// bridged traffic cannot be made to pass the inet hooks (br_netfilter
// missing, or its switch off and the sysctls read-only): policies would
// then silently not apply between pods of one node. The engine is
// returned for the netfilter watcher's resync after a flushed table.
func startPolicy(ctx context.Context, wg *sync.WaitGroup, s policyStart) (*netpol.Engine, error) {
	if err := dataplane.EnableBridgeNetfilter(s.procSys); err != nil {
		return nil, fmt.Errorf("--network-policy: %w", err)
	}
	log := s.log.With("component", "network-policy")
	e := netpol.New(netpol.Config{NodeName: s.node, DataPlane: dataplane.New(), Log: log})
	pods, namespaces, policies := s.d.Client().PolicyInformers()
	run, err := netpol.Watch(netpol.Informers{Pods: pods, Namespaces: namespaces, Policies: policies}, e, log, policyTick)
	if err != nil {
		return nil, err
	}
	wg.Go(func() {
		log.Info("network policy: waiting for the Pod, Namespace and NetworkPolicy caches")
		if err := run(ctx); err != nil && ctx.Err() == nil {
			log.Error("network policy stopped", "err", err)
		}
	})
	return e, nil
}
