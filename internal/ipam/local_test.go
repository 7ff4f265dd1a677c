package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
)

// Every implementation of the contract, checked at compile time here for
// Local; lite.Client and cluster.Cluster assert it in their packages.
var (
	_ Allocator = (*Local)(nil)
	_ Inventory = (*Local)(nil)
)

type recorder struct {
	mu      sync.Mutex
	changes []string
}

func (r *recorder) Changed(network string, reserved, released int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, fmt.Sprintf("%s +%d -%d", network, reserved, released))
}

// TestLocalCountsAndReports: Release and GC say how many addresses they
// freed, and the Observer hears what each call changed (a repeated ADD
// changes nothing).
func TestLocalCountsAndReports(t *testing.T) {
	conf, _ := fileConf(t, "10.7.0.0/24")
	obs := &recorder{}
	l := NewLocal(conf.DataDir, LocalOptions{Observer: obs})
	ctx := context.Background()
	for _, id := range []string{"a", "a", "b", "c"} {
		if _, err := l.Allocate(ctx, conf, own(id)); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := l.Release(ctx, conf, own("a")); err != nil || n != 1 {
		t.Fatalf("Release(a) = %d, %v; want 1", n, err)
	}
	if n, err := l.Release(ctx, conf, own("a")); err != nil || n != 0 {
		t.Fatalf("repeated Release(a) = %d, %v; want 0", n, err)
	}
	if n, err := l.GC(ctx, conf, []Owner{own("b")}); err != nil || n != 1 {
		t.Fatalf("GC keeping b = %d, %v; want 1 (c's)", n, err)
	}
	want := []string{"filenet +1 -0", "filenet +1 -0", "filenet +1 -0", "filenet +0 -1", "filenet +0 -1"}
	if !slices.Equal(obs.changes, want) {
		t.Errorf("observer heard %v, want %v", obs.changes, want)
	}
}

// TestLocalListCreatesNothing: listing a network without a store answers
// "no reservation" and leaves the data dir as it was; Networks names the
// networks with a store.
func TestLocalListCreatesNothing(t *testing.T) {
	conf, _ := fileConf(t, "10.7.0.0/24")
	l := NewLocal(conf.DataDir, LocalOptions{})
	ctx := context.Background()
	if res, err := l.List(ctx, conf); err != nil || len(res) != 0 {
		t.Fatalf("List of a network without a store = %v, %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(conf.DataDir, conf.Name)); !os.IsNotExist(err) {
		t.Fatalf("List created the store: %v", err)
	}
	if _, err := l.Allocate(ctx, conf, own("a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(conf.DataDir, ".hidden"), 0o700); err != nil {
		t.Fatal(err)
	}
	if nets, err := l.Networks(ctx); err != nil || !slices.Equal(nets, []string{"filenet"}) {
		t.Fatalf("Networks = %v, %v", nets, err)
	}
}

// TestLocalQueuesCallsPerNetwork: calls for one network wait their turn
// in memory and give up with code 11 when their context ends first.
func TestLocalQueuesCallsPerNetwork(t *testing.T) {
	conf, _ := fileConf(t, "10.7.0.0/24")
	l := NewLocal(conf.DataDir, LocalOptions{})
	n, err := l.network(conf.Name)
	if err != nil {
		t.Fatal(err)
	}
	n.sem <- struct{}{} // a call in progress
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = l.Allocate(ctx, conf, own("a"))
	if cnierr.CodeOf(err) != cnierr.TryAgainLater || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("Allocate while the network is busy: %v, want code 11", err)
	}
	<-n.sem
	if _, err := l.Allocate(context.Background(), conf, own("a")); err != nil {
		t.Fatal(err)
	}
}

// fixedAnswer is an allocator that answers Allocate with addrs.
type fixedAnswer struct {
	Allocator
	addrs    []Address
	released []Owner
}

func (f *fixedAnswer) Allocate(context.Context, *config.IPAMConfig, Owner) ([]Address, error) {
	return f.addrs, nil
}

func (f *fixedAnswer) Release(_ context.Context, _ *config.IPAMConfig, o Owner) (int, error) {
	f.released = append(f.released, o)
	return len(f.addrs), nil
}

// TestAllocateResultChecksTheAnswer guards the trust boundary at pierd's
// socket: an answer that does not fit the requested ranges (an address
// outside them, a prefix wider than the range's subnet, a gateway outside
// the prefix, a range set missing or out of order) is refused with code
// 5 and released, never handed to the container.
func TestAllocateResultChecksTheAnswer(t *testing.T) {
	conf := loadConf(t, `{"type":"pier-ipam","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.20"}],[{"subnet":"fd00::/64"}]]}`, "")
	addr := func(p, gw string, set int) Address {
		a := Address{Prefix: netip.MustParsePrefix(p), RangeSet: set}
		if gw != "" {
			a.Gateway = netip.MustParseAddr(gw)
		}
		return a
	}
	good := []Address{addr("10.0.0.10/24", "10.0.0.1", 0), addr("fd00::2/64", "fd00::1", 1)}
	cases := []struct {
		name  string
		addrs []Address
		msg   string
	}{
		{"as asked", good, ""},
		{"a block of the subnet (cluster mode)", []Address{addr("10.0.0.10/26", "10.0.0.1", 0), good[1]}, ""},
		{"outside the range", []Address{addr("10.0.0.21/24", "10.0.0.1", 0), good[1]}, "10.0.0.21 lies outside range set 0"},
		{"another network", []Address{addr("192.0.2.10/24", "192.0.2.1", 0), good[1]}, "outside range set 0"},
		{"wider than the subnet", []Address{addr("10.0.0.10/16", "10.0.0.1", 0), good[1]}, "wider than its range's subnet"},
		{"gateway elsewhere", []Address{addr("10.0.0.10/24", "10.9.0.1", 0), good[1]}, "gateway 10.9.0.1"},
		{"gateway is the address", []Address{addr("10.0.0.10/24", "10.0.0.10", 0), good[1]}, "gateway 10.0.0.10"},
		{"a range set missing", good[:1], "1 addresses for 2 range sets"},
		{"range sets swapped", []Address{good[1], good[0]}, "said to come from range set 1"},
		{"range set mislabelled", []Address{good[0], addr("fd00::2/64", "", 0)}, "said to come from range set 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fixedAnswer{addrs: tc.addrs}
			res, err := AllocateResult(context.Background(), f, conf, own("a"))
			if tc.msg == "" {
				if err != nil || len(res.IPs) != len(tc.addrs) || len(f.released) != 0 {
					t.Fatalf("%v, %v (released %v)", res, err, f.released)
				}
				return
			}
			wantCode(t, err, cnierr.IOFailure, tc.msg, "refused")
			if !slices.Equal(f.released, []Owner{own("a")}) {
				t.Errorf("a refused answer was not released: released %v", f.released)
			}
		})
	}
}
