package nat

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
)

func TestObjectNames(t *testing.T) {
	short := objectNames("mybridge")
	if short.chain != "mybridge-postrouting" || short.set4 != "mybridge-masq4" || short.set6 != "mybridge-masq6" {
		t.Errorf("objectNames(mybridge) = %+v", short)
	}
	exact := strings.Repeat("a", maxBaseLen)
	if got := objectNames(exact).set4; got != exact+"-masq4" {
		t.Errorf("a %d-byte name must stay verbatim, got %q", maxBaseLen, got)
	}

	long := strings.Repeat("n", 60) + "-1"
	long2 := strings.Repeat("n", 60) + "-2"
	a, b := objectNames(long), objectNames(long2)
	if a != objectNames(long) {
		t.Error("shortening is not deterministic")
	}
	if a.set4 == b.set4 || a.chain == b.chain {
		t.Errorf("names differing only after the prefix collide: %q", a.set4)
	}
	base := strings.TrimSuffix(a.set4, "-masq4")
	if len(base) <= maxBaseLen || len(base) != shortPrefixLen+1+16 {
		t.Errorf("shortened base %q has length %d; want %d, above %d so no verbatim name can equal it",
			base, len(base), shortPrefixLen+17, maxBaseLen)
	}
	if !strings.HasPrefix(base, long[:shortPrefixLen]) {
		t.Errorf("shortened base %q does not keep the readable prefix", base)
	}
	if !strings.Contains(a.ruleComment(), long) {
		t.Errorf("rule comment %q must carry the full network name", a.ruleComment())
	}
}

func TestStoredOwner(t *testing.T) {
	if got := StoredOwner("c0ffee/eth0"); got != "c0ffee/eth0" {
		t.Errorf("short owner changed: %q", got)
	}
	long1 := strings.Repeat("f", 200) + "/eth0"
	long2 := strings.Repeat("f", 200) + "/eth1"
	s1, s2 := StoredOwner(long1), StoredOwner(long2)
	if len(s1) > maxCommentLen || s1 == s2 || s1 != StoredOwner(long1) {
		t.Errorf("StoredOwner long: %q (%d bytes) vs %q", s1, len(s1), s2)
	}
	multi := strings.Repeat("é", 100) // 200 bytes of 2-byte runes
	if s := StoredOwner(multi); !strings.HasPrefix(s, strings.Repeat("é", 55)) || len(s) > maxCommentLen {
		t.Errorf("StoredOwner split a rune or overflowed: %q", s)
	}
}

// noKernel points calls at no namespace at all (setns on fd -1 fails), so
// if validation ever let a call through, it would fail instead of touching
// the host's own ruleset.
var noKernel = InNetNS(-1)

func TestValidation(t *testing.T) {
	bad := []Network{
		{Name: ""},
		{Name: "-lead"},
		{Name: "has space"},
		{Name: `quo"te`},
		{Name: "ok", Subnets: []netip.Prefix{{}}},
		{Name: "ok", Subnets: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
	}
	for _, n := range bad {
		if err := AddMasq(n, nil, "x", noKernel); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddMasq(%+v) = %v, want ErrInvalid", n, err)
		}
	}
	good := Network{Name: "ok"}
	if err := AddMasq(good, []netip.Addr{{}}, "x", noKernel); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddMasq with the zero Addr = %v, want ErrInvalid", err)
	}
	if err := AddMasq(good, nil, "a\x00b", noKernel); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddMasq with NUL in owner = %v, want ErrInvalid", err)
	}
	if err := DelMasq(Network{Name: "bad name"}, nil, noKernel); !errors.Is(err, ErrInvalid) {
		t.Errorf("DelMasq(bad name) = %v, want ErrInvalid", err)
	}
	if _, err := ListMasq("bad name", noKernel); !errors.Is(err, ErrInvalid) {
		t.Errorf("ListMasq(bad name) = %v, want ErrInvalid", err)
	}
	if err := RemoveNetwork("bad/name", noKernel); !errors.Is(err, ErrInvalid) {
		t.Errorf("RemoveNetwork(bad/name) = %v, want ErrInvalid", err)
	}
}

func TestSplitAddrs(t *testing.T) {
	in := []netip.Addr{
		netip.MustParseAddr("10.0.0.3"),
		netip.MustParseAddr("::ffff:10.0.0.2"), // mapped: counts as IPv4
		netip.MustParseAddr("10.0.0.3"),
		netip.MustParseAddr("2001:db8::1"),
	}
	v4, v6, err := splitAddrs(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(v4) != 2 || len(v6) != 1 {
		t.Fatalf("v4 %v v6 %v: want 2 deduplicated IPv4 keys and 1 IPv6 key", v4, v6)
	}
	if string(v4[0]) != "\x0a\x00\x00\x02" || len(v6[0]) != 16 {
		t.Errorf("keys %x %x", v4, v6)
	}
}

func TestSpecGenerations(t *testing.T) {
	a, err := newSpec(Network{Name: "n", Subnets: prefixes("10.1.0.0/16", "2001:db8::/64", "10.0.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := newSpec(Network{Name: "n", Subnets: prefixes("2001:db8::1/64", "10.0.0.9/24", "10.1.0.0/16", "10.1.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	if a.gen != b.gen {
		t.Errorf("order, host bits or duplicates changed the generation: %s vs %s", a.gen, b.gen)
	}
	if len(b.v4) != 2 || b.v4[0] != netip.MustParsePrefix("10.0.0.0/24") {
		t.Errorf("canonical v4 = %v", b.v4)
	}
	c, _ := newSpec(Network{Name: "n", Subnets: prefixes("10.1.0.0/16", "2001:db8::/64")})
	if c.gen == a.gen {
		t.Errorf("different subnets share generation %s", c.gen)
	}
	if !a.isGenChain(a.gen) || !a.isGenChain(c.gen) {
		t.Errorf("%s / %s not recognised as generation chains of %q", a.gen, c.gen, a.network)
	}
	// Objects of other networks, including ones whose names extend n's,
	// must never look like n's generation chains.
	for _, other := range []string{"n-masq-x", "n-masq-deadbeef", "n-masq4", "m"} {
		o := objectNames(other)
		s, _ := newSpec(Network{Name: other})
		for _, name := range []string{o.chain, o.set4, o.set6, s.gen} {
			if a.isGenChain(name) {
				t.Errorf("%q of network %q taken for a generation chain of %q", name, other, a.network)
			}
		}
	}
}

func TestDescribe(t *testing.T) {
	n := Network{Name: "mybridge", Subnets: prefixes(
		"2001:db8:15::/64", "10.15.20.7/24", "192.0.2.9/32", "10.15.20.0/24")}
	// The generation hash is pinned: changing how it is computed would
	// orphan the chains of every node on upgrade.
	want := `table inet pier {
	map mybridge-masq4 {
		type ipv4_addr : verdict
		comment "pier: masquerade sources of network mybridge"
	}

	map mybridge-masq6 {
		type ipv6_addr : verdict
		comment "pier: masquerade sources of network mybridge"
	}

	chain mybridge-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr vmap @mybridge-masq4 comment "pier: masquerade network mybridge"
		ip6 saddr vmap @mybridge-masq6 comment "pier: masquerade network mybridge"
	}

	chain mybridge-masq-78600af9 {
		ip daddr 10.15.20.0/24 return
		ip daddr 192.0.2.9 return
		ip daddr 224.0.0.0/4 return
		ip6 daddr 2001:db8:15::/64 return
		ip6 daddr ff00::/8 return
		masquerade comment "pier: masquerade network mybridge"
	}
}
`
	if got := Describe(n); got != want {
		t.Errorf("Describe:\n%s\nwant:\n%s", got, want)
	}
	if got := Describe(Network{Name: "bad name"}); !strings.HasPrefix(got, "# ") {
		t.Errorf("Describe(invalid) = %q, want an nft comment", got)
	}
}

// TestDaddrIn checks the compiled prefix matches without a kernel: a
// byte-aligned prefix compares its leading bytes, others mask first.
func TestDaddrIn(t *testing.T) {
	aligned := daddrIn(ipv4, netip.MustParsePrefix("10.15.0.0/16"))
	if len(aligned) != 2 {
		t.Fatalf("aligned /16: %d exprs, want payload+cmp", len(aligned))
	}
	if p := aligned[0].(*expr.Payload); p.Len != 2 || p.Offset != 16 {
		t.Errorf("aligned payload %+v, want 2 bytes at 16", p)
	}
	if c := aligned[1].(*expr.Cmp); c.Op != expr.CmpOpEq || string(c.Data) != "\x0a\x0f" {
		t.Errorf("aligned cmp %+v", c)
	}

	odd := daddrIn(ipv6, netip.MustParsePrefix("2001:db8:8::/45"))
	if len(odd) != 3 {
		t.Fatalf("/45: %d exprs, want payload+bitwise+cmp", len(odd))
	}
	bw := odd[1].(*expr.Bitwise)
	wantMask := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xf8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if string(bw.Mask) != string(wantMask) || len(bw.Xor) != 16 {
		t.Errorf("/45 mask %x xor %x", bw.Mask, bw.Xor)
	}
	if p := odd[0].(*expr.Payload); p.Len != 16 || p.Offset != 24 {
		t.Errorf("/45 payload %+v, want 16 bytes at 24", p)
	}
}

// TestEscapeComment: what could break `nft -f` of a listing, or a terminal
// showing it, is escaped; readable owners are kept as they are; distinct
// owners stay distinct.
func TestEscapeComment(t *testing.T) {
	for in, want := range map[string]string{
		"c0ffee/eth0":          "c0ffee/eth0",
		`c1/e"0`:               "c1/e%220",
		"c2/e%22":              "c2/e%2522",
		"c3/\x1b[31m":          "c3/%1B[31m",
		"c4/a\x7f\x01":         "c4/a%7F%01",
		"c5/\xff\xfe":          "c5/%FF%FE",
		"c6/é'\\;#{}$":         "c6/é'\\;#{}$",
		"c7/\u0085x":           "c7/%C2%85x", // NEL, a C1 control
		"c8/\u00a0x":           "c8/%C2%A0x", // no-break space
		"net/c9/if\"":          "net/c9/if%22",
		strings.Repeat("a", 3): "aaa",
	} {
		if got := escapeComment(in); got != want {
			t.Errorf("escapeComment(%q) = %q, want %q", in, got, want)
		}
	}
	if escapeComment(`a"`) == escapeComment("a%22") {
		t.Error("two owners escape to the same comment")
	}
	long := strings.Repeat(`"`, 100)
	if s := StoredOwner(long); len(s) > maxCommentLen || strings.Contains(s, `"`) {
		t.Errorf("StoredOwner of a long quoted owner: %q (%d bytes)", s, len(s))
	}
}
