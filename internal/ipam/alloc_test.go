package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
)

// loadConf builds a validated config from an "ipam" section, the way the
// plugin does.
func loadConf(t testing.TB, ipamJSON, envArgs string) *config.IPAMConfig {
	t.Helper()
	stdin := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"testnet","ipam":%s}`, ipamJSON)
	conf, err := config.LoadIPAM([]byte(stdin), envArgs)
	if err != nil {
		t.Fatalf("LoadIPAM(%s): %v", ipamJSON, err)
	}
	return conf
}

func own(id string) Owner { return Owner{ContainerID: id, IfName: "eth0"} }

// wantCode fails unless err carries code and its text contains every part.
func wantCode(t *testing.T, err error, code uint, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want code %d", code)
	}
	if got := cnierr.CodeOf(err); got != code {
		t.Fatalf("code %d (%v), want %d", got, err, code)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

// addOne runs Add and returns the first address of the result.
func addOne(t *testing.T, a testAllocator, o Owner) string {
	t.Helper()
	res, err := a.Add(context.Background(), o)
	if err != nil {
		t.Fatalf("Add(%s): %v", o, err)
	}
	return res.IPs[0].Address.String()
}

// small is 10.0.0.0/29: gateway .1, allocatable .2 to .6.
const small = `{"type":"pier-ipam","subnet":"10.0.0.0/29","routes":[{"dst":"0.0.0.0/0"}]}`

func TestAddRoundRobinAndWrap(t *testing.T) {
	ctx := context.Background()
	a := newTest(loadConf(t, small, ""), newMemStore())
	res, err := a.Add(ctx, own("a"))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.IPs[0].Address.String(); got != "10.0.0.2/29" {
		t.Errorf("first address %s, want 10.0.0.2/29 (the gateway .1 is never handed out)", got)
	}
	if gw := res.IPs[0].Gateway.String(); gw != "10.0.0.1" {
		t.Errorf("gateway %s, want 10.0.0.1", gw)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("routes %v, want the config's 0.0.0.0/0", res.Routes)
	}
	steps := []struct {
		op, id, want string
	}{
		{"add", "b", "10.0.0.3/29"},
		{"del", "a", ""},
		{"add", "c", "10.0.0.4/29"}, // .2 was just released: not reused yet
		{"add", "d", "10.0.0.5/29"},
		{"add", "e", "10.0.0.6/29"},
		{"add", "f", "10.0.0.2/29"}, // wrapped round to the free .2
	}
	for _, s := range steps {
		if s.op == "del" {
			if err := a.Del(ctx, own(s.id)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if got := addOne(t, a, own(s.id)); got != s.want {
			t.Errorf("Add(%s) = %s, want %s", s.id, got, s.want)
		}
	}
	_, err = a.Add(ctx, own("g"))
	wantCode(t, err, cnierr.PoolExhausted, "range set 0", "10.0.0.1-10.0.0.6", "testnet")
}

func TestAddAcrossRangesOfOneSet(t *testing.T) {
	a := newTest(loadConf(t, `{"type":"pier-ipam","ranges":[[
		{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.11"},
		{"subnet":"10.2.0.0/24","rangeStart":"10.2.0.20","rangeEnd":"10.2.0.20","gateway":"10.2.0.254"}]]}`, ""), newMemStore())
	var got []string
	for _, id := range []string{"a", "b", "c"} {
		got = append(got, addOne(t, a, own(id)))
	}
	want := []string{"10.1.0.10/24", "10.1.0.11/24", "10.2.0.20/24"}
	if !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
	if err := a.Del(context.Background(), own("a")); err != nil {
		t.Fatal(err)
	}
	if got := addOne(t, a, own("d")); got != "10.1.0.10/24" {
		t.Errorf("after wrapping from the last range: %s, want 10.1.0.10/24", got)
	}
}

func TestAddIdempotent(t *testing.T) {
	st := newMemStore()
	a := newTest(loadConf(t, small, ""), st)
	first := addOne(t, a, own("a"))
	if again := addOne(t, a, own("a")); again != first {
		t.Errorf("repeated ADD returned %s, first returned %s", again, first)
	}
	if other := addOne(t, a, Owner{ContainerID: "a", IfName: "net1"}); other == first {
		t.Errorf("another interface of the same container got the same address %s", other)
	}
	if len(st.records) != 2 {
		t.Errorf("%d records after two owners' ADDs, want 2", len(st.records))
	}
}

func TestAddRequested(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	got := addOne(t, newTest(loadConf(t, small, "IP=10.0.0.5"), st), own("a"))
	if got != "10.0.0.5/29" {
		t.Fatalf("requested 10.0.0.5, got %s", got)
	}
	cases := []struct {
		name, ipam, args string
		owner            Owner
		parts            []string
	}{
		{"held by another", small, "IP=10.0.0.5", own("b"), []string{"10.0.0.5", "held by a/eth0"}},
		{"outside every range", small, "IP=10.0.0.9", own("b"), []string{"10.0.0.9", "outside every range", "testnet"}},
		{"gateway", small, "IP=10.0.0.1", own("b"), []string{"10.0.0.1", "gateway"}},
		{"two in one set", small, "IP=10.0.0.3,10.0.0.4", own("b"), []string{"10.0.0.3", "10.0.0.4", "range set 0"}},
		{"differs from held", small, "IP=10.0.0.6", own("a"), []string{"already holds 10.0.0.5", "10.0.0.6"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := newTest(loadConf(t, c.ipam, c.args), st).Add(ctx, c.owner)
			wantCode(t, err, cnierr.AddressUnavailable, c.parts...)
		})
	}
	// The same request again is an idempotent ADD, not a conflict.
	if again := addOne(t, newTest(loadConf(t, small, "IP=10.0.0.5"), st), own("a")); again != got {
		t.Errorf("repeated requested ADD returned %s, want %s", again, got)
	}
}

// dual is a v4 set with room for many and a v6 /126 with room for two
// (::0 network, ::1 gateway, ::2 and ::3 allocatable).
const dual = `{"type":"pier-ipam","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/126"}]]}`

// roomy is dual stack with room for many in both sets.
const roomy = `{"type":"pier-ipam","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/120"}]]}`

func TestAddDualStackFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	a := newTest(loadConf(t, dual, ""), st)
	res, err := a.Add(ctx, own("a"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 2 || res.IPs[0].Address.String() != "10.0.0.2/24" || res.IPs[1].Address.String() != "fd00::2/126" {
		t.Fatalf("dual-stack result %v, want 10.0.0.2/24 and fd00::2/126", res.IPs)
	}
	if gw := res.IPs[1].Gateway.String(); gw != "fd00::1" {
		t.Errorf("v6 gateway %s, want fd00::1", gw)
	}
	addOne(t, a, own("b"))
	_, err = a.Add(ctx, own("c"))
	wantCode(t, err, cnierr.PoolExhausted, "range set 1", "fd00::")
	// c's v4 reservation (made before v6 failed) must be gone.
	if held, _ := ownedBy(st, own("c")); len(held) != 0 {
		t.Errorf("failed ADD left %v reserved", held)
	}
	if _, ok := st.indexes[own("c")]; ok {
		t.Error("failed ADD left an index for an owner that holds nothing")
	}
	if err := st.checkInvariant(); err != nil {
		t.Error(err)
	}
}

func TestDelAndCheck(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	a := newTest(loadConf(t, dual, ""), st)
	addOne(t, a, own("a"))
	held, err := a.Check(ctx, own("a"))
	if err != nil || len(held) != 2 {
		t.Fatalf("Check = %v, %v; want two addresses", held, err)
	}
	_, err = a.Check(ctx, own("nobody"))
	wantCode(t, err, cnierr.UnknownContainer, "nobody", "eth0", "testnet")

	// An interrupted ADD of b's can leave a's address in b's index: DEL of b
	// must not release a's address.
	st.indexes[own("b")] = []netip.Addr{held[0], netip.MustParseAddr("10.0.0.77")}
	if err := a.Del(ctx, own("b")); err != nil {
		t.Fatal(err)
	}
	if h, ok, _ := st.Holder(held[0]); !ok || h != own("a") {
		t.Errorf("DEL of b released a's %s", held[0])
	}
	for range 2 { // DEL is idempotent
		if err := a.Del(ctx, own("a")); err != nil {
			t.Fatal(err)
		}
	}
	if len(st.records) != 0 || len(st.indexes) != 0 {
		t.Errorf("after DELs: records %v, indexes %v", st.records, st.indexes)
	}
}

func TestGC(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	a := newTest(loadConf(t, roomy, ""), st)
	for _, id := range []string{"a", "b", "c"} {
		addOne(t, a, own(id))
	}
	if err := a.GC(ctx, []Owner{own("b"), own("gone")}); err != nil {
		t.Fatal(err)
	}
	for o := range st.indexes {
		if o != own("b") {
			t.Errorf("GC kept the index of %s", o)
		}
	}
	for addr, r := range st.records {
		if r.owner != own("b") {
			t.Errorf("GC kept %s of %s", addr, r.owner)
		}
	}
	if len(st.records) != 2 {
		t.Errorf("GC left %d records, want b's 2", len(st.records))
	}
	if err := a.GC(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if len(st.records) != 0 || len(st.indexes) != 0 {
		t.Errorf("GC with no valid attachment left %v / %v", st.records, st.indexes)
	}
}

func TestUnreadableRecords(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	a := newTest(loadConf(t, small, ""), st)
	bad := fmt.Errorf("garbage: %w", os.ErrInvalid)
	// .2 is unreadable and listed by a's index; .3 is unreadable and listed
	// by nobody's.
	st.records[netip.MustParseAddr("10.0.0.2")] = memRecord{err: bad}
	st.records[netip.MustParseAddr("10.0.0.3")] = memRecord{err: bad}
	st.indexes[own("a")] = []netip.Addr{netip.MustParseAddr("10.0.0.2")}

	if got := addOne(t, a, own("b")); got != "10.0.0.4/29" {
		t.Errorf("Add = %s, want 10.0.0.4/29: unreadable records count as held", got)
	}
	list, err := a.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].Problem == "" || list[1].Problem == "" || list[2].Owner != own("b") {
		t.Errorf("List = %+v, want two problems then b's", list)
	}
	if err := a.GC(ctx, []Owner{own("a"), own("b")}); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.records[netip.MustParseAddr("10.0.0.2")]; !ok {
		t.Error("GC discarded an unreadable record a valid owner lists")
	}
	if _, ok := st.records[netip.MustParseAddr("10.0.0.3")]; ok {
		t.Error("GC kept an unreadable record no valid owner lists")
	}
}

func TestStatus(t *testing.T) {
	ctx := context.Background()
	st := newMemStore()
	a := newTest(loadConf(t, small, ""), st)
	if err := a.Status(ctx); err != nil {
		t.Fatalf("Status of an empty pool: %v", err)
	}
	for _, id := range []string{"a", "b", "c", "d"} {
		addOne(t, a, own(id))
	}
	st.records[netip.MustParseAddr("10.0.0.6")] = memRecord{err: os.ErrInvalid}
	wantCode(t, a.Status(ctx), cnierr.PluginNotAvailable, "range set 0", "no free address", "1 of its addresses are held by unreadable")
	if err := a.Del(ctx, own("b")); err != nil {
		t.Fatal(err)
	}
	if err := a.Status(ctx); err != nil {
		t.Errorf("Status after a release: %v", err)
	}
}

func TestStatusListRangeSetMinusOne(t *testing.T) {
	st := newMemStore()
	st.records[netip.MustParseAddr("192.168.9.9")] = memRecord{owner: own("old")}
	list, err := newTest(loadConf(t, small, ""), st).List(context.Background())
	if err != nil || len(list) != 1 || list[0].RangeSet != -1 {
		t.Errorf("List = %+v, %v; want one reservation outside every range (-1)", list, err)
	}
}

// TestAddCostIndependentOfN shows an ADD reads a handful of records whatever
// the number of reservations: the round-robin hint points at a free address.
func TestAddCostIndependentOfN(t *testing.T) {
	st := newMemStore()
	a := newTest(loadConf(t, `{"type":"pier-ipam","subnet":"10.8.0.0/16"}`, ""), st)
	for i := range 1000 {
		addOne(t, a, own(fmt.Sprintf("c%d", i)))
	}
	st.holderCalls = 0
	addOne(t, a, own("late"))
	if st.holderCalls > 4 {
		t.Errorf("ADD with 1000 reservations looked up %d records, want a handful", st.holderCalls)
	}
}

func TestAddBusyStore(t *testing.T) {
	st := newMemStore()
	st.sem <- struct{}{} // someone holds the lock
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := newTest(loadConf(t, small, ""), st).Add(ctx, own("a"))
	wantCode(t, err, cnierr.TryAgainLater)
}

func TestAddInvalidOwner(t *testing.T) {
	a := newTest(loadConf(t, small, ""), newMemStore())
	_, err := a.Add(context.Background(), Owner{ContainerID: "../etc", IfName: "eth0"})
	wantCode(t, err, cnierr.InvalidEnv, "CNI_CONTAINERID")
}

func TestAddDNS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	content := "# comment\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.test\n" +
		"search a.test b.test\noptions ndots:2 edns0\n; another comment\nbogus\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	ipam := fmt.Sprintf(`{"type":"pier-ipam","subnet":"10.0.0.0/29","resolvConf":%q}`, path)
	res, err := newTest(loadConf(t, ipam, ""), newMemStore()).Add(context.Background(), own("a"))
	if err != nil {
		t.Fatal(err)
	}
	d := res.DNS
	if !slices.Equal(d.Nameservers, []string{"10.0.0.53", "fd00::53"}) || d.Domain != "example.test" ||
		!slices.Equal(d.Search, []string{"a.test", "b.test"}) || !slices.Equal(d.Options, []string{"ndots:2", "edns0"}) {
		t.Errorf("DNS = %+v", d)
	}
	ipam = `{"type":"pier-ipam","subnet":"10.0.0.0/29","resolvConf":"/nonexistent/resolv.conf"}`
	_, err = newTest(loadConf(t, ipam, ""), newMemStore()).Add(context.Background(), own("a"))
	wantCode(t, err, cnierr.InvalidConfig, "resolvConf", "/nonexistent/resolv.conf")
}

func TestCandidatesVisitEachOnce(t *testing.T) {
	conf := loadConf(t, `{"type":"pier-ipam","ranges":[[
		{"subnet":"10.0.0.0/29"},{"subnet":"10.0.1.0/30"}]]}`, "")
	set := conf.RangeSets[0]
	for _, last := range []string{"", "10.0.0.2", "10.0.0.6", "10.0.1.2", "10.9.9.9"} {
		var l netip.Addr
		if last != "" {
			l = netip.MustParseAddr(last)
		}
		var got []string
		for a := range candidates(set, l, newTest(conf, nil).gateways) {
			got = append(got, a.String())
		}
		// .2-.6 of the first range and .2 of the second: 6 addresses.
		if len(got) != 6 || slices.Contains(got, "10.0.0.1") || slices.Contains(got, "10.0.1.1") {
			t.Errorf("after %q: %v, want 6 addresses without gateways", last, got)
		}
		slices.Sort(got)
		if len(slices.Compact(got)) != 6 {
			t.Errorf("after %q: a candidate repeats", last)
		}
	}
}

// TestNeverHandsOutAGateway guards against giving a container the address
// of a gateway, which the bridge holds (isGateway): a gateway of any range
// of the network, also of another range set of the same family (two IPv4
// range sets of one subnet, each with its own gateway), is neither
// allocated nor granted on request.
func TestNeverHandsOutAGateway(t *testing.T) {
	const ranges = `{"type":"pier-ipam","ranges":[
		[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.2","rangeEnd":"10.0.0.5","gateway":"10.0.0.1"},
		 {"subnet":"10.0.1.0/24","rangeStart":"10.0.1.2","rangeEnd":"10.0.1.3","gateway":"10.0.1.1"}],
		[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.6","rangeEnd":"10.0.0.9","gateway":"10.0.0.3"}]]}`
	conf := loadConf(t, ranges, "")
	gateways := map[netip.Addr]bool{}
	for _, set := range conf.RangeSets {
		for _, r := range set {
			gateways[r.Gateway] = true
		}
	}
	a := newTest(conf, newMemStore())
	ctx := context.Background()
	for i := 0; ; i++ {
		res, err := a.Add(ctx, own(fmt.Sprint("c", i)))
		if cnierr.CodeOf(err) == cnierr.PoolExhausted {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, ipc := range res.IPs {
			addr, _ := netip.AddrFromSlice(ipc.Address.IP)
			if gateways[addr.Unmap()] {
				t.Fatalf("container c%d got %s, a gateway of the network", i, addr)
			}
		}
	}
	_, err := newTest(loadConf(t, ranges, "IP=10.0.0.3"), newMemStore()).Add(ctx, own("static"))
	wantCode(t, err, cnierr.AddressUnavailable, "10.0.0.3", "gateway")
}
