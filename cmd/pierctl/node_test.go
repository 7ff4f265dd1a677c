package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/nodestatus"
)

// TestNodeRouteTable: pierctl node sets what pierd wants beside what the
// kernel holds: ok, missing, differs, and stale for a route of Pier's
// protocol pierd no longer wants.
func TestNodeRouteTable(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	want := []nodestatus.Route{
		{Dst: p("10.244.2.0/24"), Via: a("192.0.2.2"), Node: "n2"},
		{Dst: p("10.244.3.0/24"), Via: a("192.0.2.3"), Node: "n3"},
		{Dst: p("10.244.4.0/24"), Via: a("192.0.2.4"), Node: "n4"},
	}
	kernel := map[netip.Prefix]nodeRoute{
		p("10.244.2.0/24"): {Dst: p("10.244.2.0/24"), Via: a("192.0.2.2"), Device: "ul0"},
		p("10.244.3.0/24"): {Dst: p("10.244.3.0/24"), Via: a("192.0.2.33"), Device: "ul0"},
		p("10.244.9.0/24"): {Dst: p("10.244.9.0/24"), Via: a("192.0.2.9"), Device: "ul0"},
	}
	rows := compareRoutes(want, kernel)
	got := map[string]string{}
	for _, r := range rows {
		got[r.Dst.String()] = r.Kernel
	}
	for dst, state := range map[string]string{"10.244.2.0/24": "ok", "10.244.3.0/24": "differs: via 192.0.2.33",
		"10.244.4.0/24": "missing", "10.244.9.0/24": "stale"} {
		if got[dst] != state {
			t.Errorf("%s: %q, want %q", dst, got[dst], state)
		}
	}
	var b bytes.Buffer
	now := time.Now()
	printNode(&b, nodeView{Status: nodestatus.Status{Datastore: "kubernetes", Node: "n1", Mode: "host-gw",
		PodCIDRs: []netip.Prefix{p("10.244.1.0/24")}, PodCIDRSource: "spec.podCIDRs of Node n1", Synced: now.Add(-3 * time.Second),
		Nodes: 4, Problems: []string{"node n5: range 10.244.5.0/24 not routed: the node has no InternalIP of its family"}}, Table: rows}, now)
	for _, w := range []string{"10.244.1.0/24 (spec.podCIDRs of Node n1)", "3s ago, from 4 Node objects", "not routed:", "n5", "stale"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, b.String())
		}
	}
}
