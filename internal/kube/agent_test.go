package kube

import (
	"log/slog"
	"strings"
	"testing"

	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/pier-cni/pier/internal/routing"
)

// TestAgentKeepsItsNodeWhileMissing guards this node's ranges and address
// while its Node object is gone (deleted, and not yet registered again by
// kubelet): the route agent plans with what it last saw of it, so another
// Node claiming this node's range — whose route would capture its pods'
// traffic, and make the stale-gateway sweep remove its live gateway — or
// a range holding its address is still refused.
func TestAgentKeepsItsNodeWhileMissing(t *testing.T) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	rec := &recorder{}
	a := &routeAgent{mode: routing.ModeHostGW, self: "a", clusterCIDRs: prefixes("10.244.0.0/16", "192.0.2.0/24"), dp: rec,
		nodes: corelisters.NewNodeLister(idx), log: slog.New(slog.DiscardHandler)}
	self := nodeObj("a", []string{"10.244.1.0/24"}, "192.0.2.1")
	for _, o := range []any{self,
		nodeObj("b", []string{"10.244.2.0/24"}, "192.0.2.2"),
		nodeObj("c", []string{"10.244.1.0/24"}, "192.0.2.3"), // a's range
		nodeObj("d", []string{"192.0.2.1/32"}, "192.0.2.4"),  // a's address
	} {
		if err := idx.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	a.sync()
	before := rec.routes()
	if len(before) != 1 || before["10.244.2.0/24"] != "192.0.2.2" {
		t.Fatalf("routes with this node's Node present: %v", before)
	}
	if err := idx.Delete(self); err != nil {
		t.Fatal(err)
	}
	a.sync()
	if after := rec.routes(); len(after) != 1 || after["10.244.2.0/24"] != "192.0.2.2" {
		t.Fatalf("routes with this node's Node missing: %v; want only b's, as before", after)
	}
	if !strings.Contains(strings.Join(a.problems, "\n"), "this node's Node object is missing") {
		t.Errorf("problems do not say this node's Node is missing: %q", a.problems)
	}
	// Back with another range: that one is this node's now, and its old
	// range may go to another node.
	if err := idx.Add(nodeObj("a", []string{"10.244.9.0/24"}, "192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	a.sync()
	if r := rec.routes(); r["10.244.1.0/24"] != "192.0.2.3" {
		t.Fatalf("routes once this node's Node is back with another range: %v", r)
	}
}
