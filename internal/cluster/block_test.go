package cluster

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestBlockTakeRelease(t *testing.T) {
	b := &Block{CIDR: netip.MustParsePrefix("10.244.1.0/26"), Node: "n1"}
	if g := b.Gateway(); g != netip.MustParseAddr("10.244.1.1") {
		t.Fatalf("gateway %s", g)
	}
	seen := map[netip.Addr]bool{}
	var hint netip.Addr
	for i := range Capacity(b.CIDR) {
		a, ok := b.Take(Allocation{Alloc: Alloc{Network: "n", ContainerID: "c" + string(rune('a'+i%26)) + string(rune('a'+i/26)), IfName: "eth0"}}, hint)
		if !ok {
			t.Fatalf("full after %d", i)
		}
		if seen[a] || a == b.Gateway() || a == b.CIDR.Addr() || a == netip.MustParseAddr("10.244.1.63") {
			t.Fatalf("bad address %s", a)
		}
		seen[a] = true
		hint = a
	}
	if Capacity(b.CIDR) != 61 {
		t.Fatalf("capacity %d", Capacity(b.CIDR))
	}
	if _, ok := b.Take(Allocation{Alloc: Alloc{Network: "n", ContainerID: "x", IfName: "eth0"}}, hint); ok {
		t.Fatal("took from a full block")
	}
	o := b.Allocs["10.244.1.2"]
	if b.Release(netip.MustParseAddr("10.244.1.2"), Allocation{Alloc: Alloc{Network: "n", ContainerID: "other", IfName: "eth0"}}, time.Now()) {
		t.Fatal("released someone else's address")
	}
	if !b.Release(netip.MustParseAddr("10.244.1.2"), o, time.Now()) {
		t.Fatal("release failed")
	}
	if a, ok := b.Take(Allocation{Alloc: Alloc{Network: "n", ContainerID: "y", IfName: "eth0"}}, hint); !ok || a != netip.MustParseAddr("10.244.1.2") {
		t.Fatalf("got %s %v", a, ok)
	}
	// Round trip through JSON, as stored in etcd.
	raw, _ := json.Marshal(b)
	var back Block
	if err := json.Unmarshal(raw, &back); err != nil || len(back.Allocs) != 61 || back.CIDR != b.CIDR {
		t.Fatalf("round trip: %v %+v", err, back.CIDR)
	}
}

func TestNextFreeBlock(t *testing.T) {
	cidr := netip.MustParsePrefix("10.244.0.0/24")
	taken := map[netip.Prefix]bool{}
	var got []string
	for {
		p, ok := NextFreeBlock(cidr, 26, taken)
		if !ok {
			break
		}
		taken[p] = true
		got = append(got, p.String())
	}
	want := []string{"10.244.0.0/26", "10.244.0.64/26", "10.244.0.128/26", "10.244.0.192/26"}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%v", got)
		}
	}
	p6, ok := NextFreeBlock(netip.MustParsePrefix("fd00:10::/64"), 122, map[netip.Prefix]bool{netip.MustParsePrefix("fd00:10::/122"): true})
	if !ok || p6 != netip.MustParsePrefix("fd00:10::40/122") {
		t.Fatalf("v6: %s", p6)
	}
	b6 := &Block{CIDR: p6}
	if a, _ := b6.Take(Allocation{Alloc: Alloc{Network: "n", ContainerID: "c", IfName: "eth0"}}, netip.Addr{}); a != netip.MustParseAddr("fd00:10::42") {
		t.Fatalf("v6 first address %s", a)
	}
	if Capacity(p6) != 62 {
		t.Fatalf("v6 capacity %d", Capacity(p6))
	}
}

func TestBlockKey(t *testing.T) {
	for _, s := range []string{"10.244.0.64/26", "fd00:10::40/122"} {
		p := netip.MustParsePrefix(s)
		back, err := ParseBlockKey(BlockKey(p))
		if err != nil || back != p {
			t.Fatalf("%s: %s %v", s, back, err)
		}
	}
	if _, err := ParseBlockKey("/pier/blocks/garbage"); err == nil {
		t.Fatal("garbage key parsed")
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10::/64")}}
	if err := good.Validate(); err != nil || good.BlockSize4 != 26 || good.BlockSize6 != 122 || good.Mode != ModeHostGW {
		t.Fatalf("%v %+v", err, good)
	}
	for _, bad := range []Config{
		{},
		{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16")}},
		{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/28")}},
		{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, Mode: "ipip"},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestTakeAddr(t *testing.T) {
	b := &Block{CIDR: netip.MustParsePrefix("10.244.0.64/26"), Node: "n1", EmptySince: time.Now()}
	a1 := Allocation{Alloc: Alloc{Network: "net", ContainerID: "c1", IfName: "eth0"}, ID: "1"}
	a2 := Allocation{Alloc: Alloc{Network: "net", ContainerID: "c2", IfName: "eth0"}, ID: "2"}
	if err := b.TakeAddr(a1, netip.MustParseAddr("10.244.0.70")); err != nil || !b.EmptySince.IsZero() {
		t.Fatalf("take: %v (emptySince %v)", err, b.EmptySince)
	}
	if err := b.TakeAddr(Allocation{Alloc: a1.Alloc, ID: "3"}, netip.MustParseAddr("10.244.0.70")); err == nil {
		t.Fatal("a second allocation of the same owner took a held address")
	}
	if b.Release(netip.MustParseAddr("10.244.0.70"), Allocation{Alloc: a1.Alloc, ID: "3"}, time.Now()) {
		t.Fatal("released the allocation of another identity")
	}
	if err := b.TakeAddr(a2, netip.MustParseAddr("10.244.0.70")); err == nil || !strings.Contains(err.Error(), "held by container c1") {
		t.Fatalf("held: %v", err)
	}
	for _, s := range []string{"10.244.0.64", "10.244.0.65", "10.244.0.127", "10.244.0.128"} {
		if err := b.TakeAddr(a2, netip.MustParseAddr(s)); err == nil {
			t.Errorf("%s: taken, want refused", s)
		}
	}
	if err := b.TakeAddr(a2, netip.MustParseAddr("10.244.0.126")); err != nil {
		t.Fatalf("last host: %v", err)
	}
	if got, ok := b.Take(a2, netip.MustParseAddr("10.244.0.69")); !ok || got != netip.MustParseAddr("10.244.0.71") {
		t.Fatalf("Take skips requested addresses: got %v", got)
	}
}
