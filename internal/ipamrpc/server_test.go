package ipamrpc

import (
	"context"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
)

func newTestServer(t *testing.T) *Server {
	t.Helper()
	s, err := NewServer(ServerOptions{DataDir: t.TempDir(), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wireNet(name string, ranges ...*ipamv1.Range) *ipamv1.Network {
	return &ipamv1.Network{Name: name, RangeSets: []*ipamv1.RangeSet{{Ranges: ranges}}}
}

// TestRequestValidation: what arrives on the socket is validated as a
// config is, with the same codes.
func TestRequestValidation(t *testing.T) {
	s := newTestServer(t)
	ctx := context.Background()
	owner := &ipamv1.Owner{ContainerId: "c1", IfName: "eth0"}
	cases := []struct {
		name string
		req  *ipamv1.AllocateRequest
		code uint
		msg  string
	}{
		{"no network", &ipamv1.AllocateRequest{Owner: owner}, cnierr.InvalidConfig, "names no network"},
		{"network name escapes the data dir", &ipamv1.AllocateRequest{Network: wireNet("../etc", &ipamv1.Range{Subnet: "10.0.0.0/24"}), Owner: owner}, cnierr.InvalidConfig, "not a valid network name"},
		{"no ranges", &ipamv1.AllocateRequest{Network: &ipamv1.Network{Name: "n"}, Owner: owner}, cnierr.InvalidConfig, "no range set"},
		{"bad subnet", &ipamv1.AllocateRequest{Network: wireNet("n", &ipamv1.Range{Subnet: "10.0.0.1/24"}), Owner: owner}, cnierr.InvalidConfig, "host bits"},
		{"bad owner", &ipamv1.AllocateRequest{Network: wireNet("n", &ipamv1.Range{Subnet: "10.0.0.0/24"}), Owner: &ipamv1.Owner{ContainerId: "a/b", IfName: "eth0"}}, cnierr.InvalidEnv, "CNI_CONTAINERID"},
		{"bad requested address", &ipamv1.AllocateRequest{Network: wireNet("n", &ipamv1.Range{Subnet: "10.0.0.0/24"}), Owner: owner, Requested: []string{"nope"}}, cnierr.InvalidConfig, "nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Allocate(ctx, tc.req)
			if code := CNICode(err); code != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got code %d: %v; want code %d with %q", code, err, tc.code, tc.msg)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(s.opts.DataDir, "..", "etc")); err == nil {
		t.Fatal("a network name escaped the data dir")
	}
}

func TestReleaseAndGCCount(t *testing.T) {
	s := newTestServer(t)
	ctx := context.Background()
	n := wireNet("n", &ipamv1.Range{Subnet: "10.0.0.0/24"})
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.Allocate(ctx, &ipamv1.AllocateRequest{Network: n, Owner: &ipamv1.Owner{ContainerId: id, IfName: "eth0"}}); err != nil {
			t.Fatal(err)
		}
	}
	rel, err := s.Release(ctx, &ipamv1.ReleaseRequest{Network: n, Owner: &ipamv1.Owner{ContainerId: "a", IfName: "eth0"}})
	if err != nil || rel.GetReleased() != 1 {
		t.Fatalf("Release: %v %v", rel, err)
	}
	rel, err = s.Release(ctx, &ipamv1.ReleaseRequest{Network: n, Owner: &ipamv1.Owner{ContainerId: "a", IfName: "eth0"}})
	if err != nil || rel.GetReleased() != 0 {
		t.Fatalf("repeated Release: %v %v", rel, err)
	}
	gc, err := s.GC(ctx, &ipamv1.GCRequest{Network: n, Valid: []*ipamv1.Owner{{ContainerId: "b", IfName: "eth0"}}})
	if err != nil || gc.GetReleased() != 1 {
		t.Fatalf("GC: %v %v", gc, err)
	}
	list, err := s.List(ctx, &ipamv1.ListRequest{Network: "n"})
	if err != nil || len(list.GetNetworks()) != 1 || len(list.GetNetworks()[0].GetLeases()) != 1 {
		t.Fatalf("List: %v %v", list, err)
	}
	if p := list.GetNetworks()[0].GetPools(); len(p) != 1 || p[0].GetSize() != 253 || p[0].GetUsed() != 1 {
		t.Fatalf("pools: %v", p)
	}
	if l, err := s.List(ctx, &ipamv1.ListRequest{Network: "unknown"}); err != nil || len(l.GetNetworks()) != 0 {
		t.Fatalf("List of a network without a store: %v %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(s.opts.DataDir, "unknown")); err == nil {
		t.Fatal("List created a store")
	}
}

func TestPoolUsage(t *testing.T) {
	r := func(start, end, gw string) config.Range {
		return config.Range{RangeStart: netip.MustParseAddr(start), RangeEnd: netip.MustParseAddr(end), Gateway: netip.MustParseAddr(gw)}
	}
	cases := []struct {
		r    config.Range
		want uint64
	}{
		{r("10.0.0.1", "10.0.0.254", "10.0.0.1"), 253},
		{r("10.0.0.10", "10.0.0.19", "10.0.0.1"), 10},
		{r("fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1"), math.MaxUint64 - 1},
		{r("fd00::1", "fd00:0:0:1::", "fd00::1"), math.MaxUint64},
	}
	for _, tc := range cases {
		if got := tc.r.Size(); got != tc.want {
			t.Errorf("Size(%v) = %d, want %d", tc.r, got, tc.want)
		}
	}
	sets := []config.RangeSet{{r("10.0.0.1", "10.0.0.9", "10.0.0.1"), r("10.0.1.1", "10.0.1.9", "10.0.1.1")}}
	res := []ipam.Reservation{{Addr: netip.MustParseAddr("10.0.1.2")}, {Addr: netip.MustParseAddr("10.0.1.3"), Problem: "unreadable"}, {Addr: netip.MustParseAddr("10.9.9.9")}}
	pools := poolUsage(sets, res)
	if len(pools) != 2 || pools[0].GetUsed() != 0 || pools[1].GetUsed() != 2 || pools[1].GetSize() != 8 {
		t.Fatalf("poolUsage: %v", pools)
	}
}
