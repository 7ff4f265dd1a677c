package kube

import (
	"net/netip"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestFirstFree(t *testing.T) {
	cases := []struct {
		cidr  string
		size  int
		taken []netip.Prefix
		want  string // "" for none
	}{
		{"10.244.0.0/16", 24, nil, "10.244.0.0/24"},
		{"10.244.0.0/16", 24, prefixes("10.244.0.0/24", "10.244.1.0/24"), "10.244.2.0/24"},
		{"10.244.0.0/16", 24, prefixes("10.244.1.0/24"), "10.244.0.0/24"},
		// A bigger or smaller range set by hand is skipped whole.
		{"10.244.0.0/16", 24, prefixes("10.244.0.0/23", "10.244.2.128/25"), "10.244.3.0/24"},
		{"10.244.0.0/16", 24, prefixes("10.0.0.0/8"), ""},
		{"10.244.0.0/30", 31, prefixes("10.244.0.0/31", "10.244.0.2/31"), ""},
		{"255.255.255.0/24", 25, prefixes("255.255.255.0/25", "255.255.255.128/25"), ""},
		// Other families and nonsense never block.
		{"10.244.0.0/16", 24, prefixes("fd00::/8", "10.244.0.0/24"), "10.244.1.0/24"},
		{"fd00:10:244::/48", 64, prefixes("fd00:10:244::/64", "fd00:10:244:1::/64", "fd00:10:244:2::/63"), "fd00:10:244:4::/64"},
		// Jumps, not steps: a /32 of /64s with its first half taken.
		{"fd00::/32", 64, prefixes("fd00::/33"), "fd00:0:8000::/64"},
		{"::/0", 1, prefixes("::/1", "8000::/1"), ""},
		{"10.244.0.0/16", 8, nil, ""},
	}
	for _, c := range cases {
		got, ok := firstFree(netip.MustParsePrefix(c.cidr), c.size, c.taken)
		if (c.want == "") != !ok || (ok && got.String() != c.want) {
			t.Errorf("firstFree(%s, /%d, %v) = %v %v, want %q", c.cidr, c.size, c.taken, got, ok, c.want)
		}
	}
}

func TestClaimName(t *testing.T) {
	for _, s := range []string{"10.244.1.0/24", "fd00:10:244:1::/64", "::/64", "0.0.0.0/8"} {
		p := netip.MustParsePrefix(s)
		name := claimName(p)
		back, ok := prefixFromClaimName(name)
		if !ok || back != p || len(name) > 63 {
			t.Errorf("%s → %q → %v %v", s, name, back, ok)
		}
	}
	if _, ok := prefixFromClaimName("pier-pod-cidr-nonsense"); ok {
		t.Error("nonsense parsed")
	}
}
