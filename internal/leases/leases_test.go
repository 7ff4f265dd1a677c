package leases

import (
	"math"
	"net/netip"
	"testing"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
)

func TestUsage(t *testing.T) {
	conf, err := config.LoadIPAM([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"pier-ipam",
	  "ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.19"},{"subnet":"10.0.1.0/30"}],
	            [{"subnet":"fd00::/64"}]]}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	res := []ipam.Reservation{
		{Addr: netip.MustParseAddr("10.0.0.10")},
		{Addr: netip.MustParseAddr("10.0.0.11"), Problem: "unparseable record"},
		{Addr: netip.MustParseAddr("10.0.1.2")},
		{Addr: netip.MustParseAddr("10.9.9.9")},
		{Addr: netip.MustParseAddr("fd00::5")},
	}
	st := Usage(conf, res)
	want := []struct{ size, used uint64 }{{10, 2}, {1, 1}, {math.MaxUint64 - 1, 1}} // a /64 holds 2^64-2 hosts besides its gateway
	if len(st.Ranges) != len(want) {
		t.Fatalf("ranges: %+v", st.Ranges)
	}
	for i, w := range want {
		if st.Ranges[i].Size != w.size || st.Ranges[i].Used != w.used {
			t.Errorf("range %d: size %d used %d, want %d %d", i, st.Ranges[i].Size, st.Ranges[i].Used, w.size, w.used)
		}
	}
	if st.Outside != 1 || st.Unreadable != 1 {
		t.Errorf("outside %d unreadable %d", st.Outside, st.Unreadable)
	}
	if f := st.Ranges[1].Free(); f != 0 {
		t.Errorf("free of a full range: %d", f)
	}
}

func TestAddrDiff(t *testing.T) {
	cases := []struct {
		a, b string
		want uint64
	}{
		{"10.0.0.1", "10.0.0.1", 0},
		{"10.0.0.255", "10.0.1.0", 1},
		{"fd00::ffff:ffff:ffff:ffff", "fd00:0:0:1::", 1},
		{"fd00::", "fd00:0:0:1::", math.MaxUint64},
	}
	for _, c := range cases {
		if got := config.AddrDiff(netip.MustParseAddr(c.a), netip.MustParseAddr(c.b)); got != c.want {
			t.Errorf("%s..%s: %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
