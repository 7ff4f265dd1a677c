package nat

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

var (
	bridgeNet = Network{Name: "mybridge", Subnets: prefixes("10.15.20.0/24", "2001:db8:15::/64")}
	otherNet  = Network{Name: "other", Subnets: prefixes("10.16.0.0/16")}
)

// wantNetwork checks the network's objects: a nat postrouting base chain
// holding exactly its two vmap rules, and the generation chain for its
// current subnets holding exactly its return rules and one masquerade.
func wantNetwork(t *testing.T, rs ruleset, n Network) {
	t.Helper()
	s := mustSpec(t, n)
	c, ok := rs.Chains[s.chain]
	if !ok {
		t.Fatalf("chain %s missing; chains %v", s.chain, rs.Chains)
	}
	if c.Type != "nat" || c.Hook != "postrouting" || c.Prio != 100 {
		t.Errorf("chain %s: type %q hook %q prio %d, want nat postrouting 100", s.chain, c.Type, c.Hook, c.Prio)
	}
	base := rs.rulesIn(s.chain)
	if len(base) != 2 || !base[0].vmapFrom(s.set4) || !base[1].vmapFrom(s.set6) {
		t.Fatalf("chain %s: %d rules %v, want vmap @%s and vmap @%s", s.chain, len(base), base, s.set4, s.set6)
	}
	for i, m := range []string{s.set4, s.set6} {
		if mp := rs.Maps[m]; mp.Map != "verdict" || mp.Type != []string{"ipv4_addr", "ipv6_addr"}[i] {
			t.Errorf("map %s: type %q : %q", m, mp.Type, mp.Map)
		}
	}
	gen := rs.rulesIn(s.gen)
	if want := len(s.genRules()); len(gen) != want {
		t.Fatalf("chain %s has %d rules, want %d", s.gen, len(gen), want)
	}
	for i, r := range gen {
		last := i == len(gen)-1
		if last != r.has("masquerade") || !last != r.has("return") {
			t.Errorf("chain %s rule %d: %v; want returns then one masquerade", s.gen, i, r.Expr)
		}
	}
	if got := gen[len(gen)-1].Comment; got != s.ruleComment() {
		t.Errorf("masquerade comment %q, want %q", got, s.ruleComment())
	}
}

func wantElements(t *testing.T, rs ruleset, mapName string, want map[string]mapElem) {
	t.Helper()
	m, ok := rs.Maps[mapName]
	if !ok {
		t.Fatalf("map %s missing", mapName)
	}
	got := m.elements(t)
	if len(got) != len(want) {
		t.Errorf("map %s holds %v, want %v", mapName, got, want)
	}
	for a, w := range want {
		if g, ok := got[netip.MustParseAddr(a)]; !ok || g != w {
			t.Errorf("map %s: element %s = %+v (present %v), want %+v", mapName, a, g, ok, w)
		}
	}
}

// TestAddMasq: the ruleset after the first AddMasq, after repeating it
// (fast and slow path), and with a second network beside it.
func TestAddMasq(t *testing.T) {
	node := testnet.New(t).Node
	gen, otherGen := mustSpec(t, bridgeNet).gen, mustSpec(t, otherNet).gen
	inNode(t, node, "ListMasq before any table", func() error {
		els, err := ListMasq(bridgeNet.Name)
		if err == nil && len(els) != 0 {
			t.Errorf("ListMasq on an empty namespace = %v", els)
		}
		return err
	})
	inNode(t, node, "AddMasq", func() error {
		return AddMasq(bridgeNet, addrs("10.15.20.2"), "1234567890/eth0")
	})
	rs := listRuleset(t, node)
	if len(rs.Tables) != 1 || rs.Tables[0].Family != "inet" || rs.Tables[0].Name != "pier" {
		t.Fatalf("tables %+v, want only inet pier", rs.Tables)
	}
	if m := rs.Maps["mybridge-masq4"]; m.Comment == "" {
		t.Errorf("map mybridge-masq4 has no comment")
	}
	wantElements(t, rs, "mybridge-masq4", map[string]mapElem{"10.15.20.2": {"1234567890/eth0", gen}})
	wantElements(t, rs, "mybridge-masq6", nil)
	wantNetwork(t, rs, bridgeNet)

	// Again (an IPv4-mapped duplicate included) plus an IPv6 address.
	for range 3 {
		inNode(t, node, "AddMasq again", func() error {
			return AddMasq(bridgeNet, addrs("10.15.20.2", "2001:db8:15::2", "::ffff:10.15.20.2"), "1234567890/eth0")
		})
	}
	// With no addresses AddMasq runs the full setup (flush and refill of
	// both chains) each time: the slow path must be idempotent as well.
	for range 2 {
		inNode(t, node, "AddMasq setup only", func() error { return AddMasq(bridgeNet, nil, "") })
	}
	inNode(t, node, "AddMasq other network", func() error {
		return AddMasq(otherNet, addrs("10.16.0.5"), "def/eth0")
	})
	rs = listRuleset(t, node)
	wantNetwork(t, rs, bridgeNet)
	wantNetwork(t, rs, otherNet)
	wantElements(t, rs, "mybridge-masq4", map[string]mapElem{"10.15.20.2": {"1234567890/eth0", gen}})
	wantElements(t, rs, "mybridge-masq6", map[string]mapElem{"2001:db8:15::2": {"1234567890/eth0", gen}})
	wantElements(t, rs, "other-masq4", map[string]mapElem{"10.16.0.5": {"def/eth0", otherGen}})
	if want := 2*2 + len(mustSpec(t, bridgeNet).genRules()) + len(mustSpec(t, otherNet).genRules()); len(rs.Rules) != want {
		t.Errorf("table holds %d rules, want %d", len(rs.Rules), want)
	}
	inNode(t, node, "ListMasq", func() error {
		els, err := ListMasq(bridgeNet.Name)
		want := []Element{{addrs("10.15.20.2")[0], "1234567890/eth0"}, {addrs("2001:db8:15::2")[0], "1234567890/eth0"}}
		if err == nil && !slices.Equal(els, want) {
			t.Errorf("ListMasq = %v, want %v", els, want)
		}
		return err
	})
}

// TestDelMasq: DelMasq removes only its elements and is idempotent: absent
// keys next to present ones of the same map (an ENOENT would abort the
// whole batch), a network never created, a network removed.
func TestDelMasq(t *testing.T) {
	node := testnet.New(t).Node
	gen := mustSpec(t, bridgeNet).gen
	inNode(t, node, "AddMasq", func() error {
		return errors.Join(
			AddMasq(bridgeNet, addrs("10.15.20.2", "2001:db8:15::2"), "a/eth0"),
			AddMasq(bridgeNet, addrs("10.15.20.3"), "b/eth0"),
			AddMasq(otherNet, addrs("10.16.0.5"), "c/eth0"))
	})
	inNode(t, node, "DelMasq", func() error { return DelMasq(bridgeNet, addrs("10.15.20.2")) })
	rs := listRuleset(t, node)
	wantElements(t, rs, "mybridge-masq4", map[string]mapElem{"10.15.20.3": {"b/eth0", gen}})
	wantElements(t, rs, "mybridge-masq6", map[string]mapElem{"2001:db8:15::2": {"a/eth0", gen}})
	wantElements(t, rs, "other-masq4", map[string]mapElem{"10.16.0.5": {"c/eth0", mustSpec(t, otherNet).gen}})
	wantNetwork(t, rs, bridgeNet)

	inNode(t, node, "DelMasq absent and present", func() error {
		return DelMasq(bridgeNet, addrs("10.15.20.2", "10.15.20.3", "10.15.20.99", "2001:db8:15::2"))
	})
	// Without subnets the generation differs: the fallback must still work.
	inNode(t, node, "DelMasq with other subnets", func() error {
		return DelMasq(Network{Name: otherNet.Name}, addrs("10.16.0.5", "10.16.0.6"))
	})
	rs = listRuleset(t, node)
	for _, m := range []string{"mybridge-masq4", "mybridge-masq6", "other-masq4"} {
		wantElements(t, rs, m, nil)
	}
	inNode(t, node, "DelMasq never-created network", func() error {
		return DelMasq(Network{Name: "ghost"}, addrs("10.1.1.1", "2001:db8::1"))
	})
	inNode(t, node, "ListMasq never-created network", func() error {
		els, err := ListMasq("ghost")
		if err == nil && len(els) != 0 {
			t.Errorf("ListMasq(ghost) = %v", els)
		}
		return err
	})

	inNode(t, node, "RemoveNetwork", func() error { return RemoveNetwork(bridgeNet.Name) })
	rs = listRuleset(t, node)
	if _, ok := rs.Chains["mybridge-postrouting"]; ok || len(rs.Maps) != 2 || len(rs.Chains) != 2 {
		t.Errorf("after RemoveNetwork: chains %v maps %v", rs.Chains, rs.Maps)
	}
	wantNetwork(t, rs, otherNet)
	inNode(t, node, "RemoveNetwork again, DelMasq after it, RemoveNetwork of nothing", func() error {
		return errors.Join(
			RemoveNetwork(bridgeNet.Name),
			DelMasq(bridgeNet, addrs("10.15.20.2")),
			RemoveNetwork("ghost"))
	})
}

// TestSubnetChange: a new subnet list makes a new generation chain; each
// element keeps the chain of the AddMasq that last wrote it, a re-added
// address moves to the new one, and PruneGenerations removes an old chain
// only once nothing points at it.
func TestSubnetChange(t *testing.T) {
	sb := testnet.New(t)
	fd := nodeFd(t, sb.Node)
	old := Network{Name: "chg", Subnets: prefixes("10.20.0.0/24")}
	cur := Network{Name: "chg", Subnets: prefixes("10.20.0.0/24", "10.21.0.0/24")}
	oldGen, curGen := mustSpec(t, old).gen, mustSpec(t, cur).gen
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	step("add a (old subnets)", AddMasq(old, addrs("10.20.0.2"), "a/eth0", InNetNS(fd)))
	step("add b (new subnets)", AddMasq(cur, addrs("10.20.0.3"), "b/eth0", InNetNS(fd)))
	rs := listRuleset(t, sb.Node)
	wantNetwork(t, rs, cur)
	if len(rs.rulesIn(oldGen)) != len(mustSpec(t, old).genRules()) {
		t.Errorf("old generation chain %s lost its rules", oldGen)
	}
	wantElements(t, rs, "chg-masq4", map[string]mapElem{"10.20.0.2": {"a/eth0", oldGen}, "10.20.0.3": {"b/eth0", curGen}})

	removed, err := PruneGenerations(cur, InNetNS(fd))
	step("prune while in use", err)
	if len(removed) != 0 {
		t.Errorf("pruned %v while 10.20.0.2 still points at %s", removed, oldGen)
	}
	// Re-adding a moves it: the add clashes (EEXIST) and is replaced, owner
	// included.
	step("re-add a (new subnets)", AddMasq(cur, addrs("10.20.0.2"), "a2/eth0", InNetNS(fd)))
	wantElements(t, listRuleset(t, sb.Node), "chg-masq4",
		map[string]mapElem{"10.20.0.2": {"a2/eth0", curGen}, "10.20.0.3": {"b/eth0", curGen}})
	removed, err = PruneGenerations(cur, InNetNS(fd))
	step("prune", err)
	if len(removed) != 1 || removed[0] != oldGen {
		t.Errorf("pruned %v, want [%s]", removed, oldGen)
	}
	rs = listRuleset(t, sb.Node)
	if _, ok := rs.Chains[oldGen]; ok {
		t.Errorf("chain %s still there after prune", oldGen)
	}
	wantNetwork(t, rs, cur)

	// Same generation, other owner: the element is left as it is (see the
	// package notes on owners).
	step("re-add b as c", AddMasq(cur, addrs("10.20.0.3"), "c/eth0", InNetNS(fd)))
	wantElements(t, listRuleset(t, sb.Node), "chg-masq4",
		map[string]mapElem{"10.20.0.2": {"a2/eth0", curGen}, "10.20.0.3": {"b/eth0", curGen}})

	step("remove", RemoveNetwork("chg", InNetNS(fd)))
	if rs := listRuleset(t, sb.Node); len(rs.Chains)+len(rs.Maps)+len(rs.Rules) != 0 {
		t.Errorf("left after RemoveNetwork: %+v", rs)
	}
}

// TestDescribeMatchesKernel checks Describe against what the kernel holds,
// including prefixes that are not byte-aligned and a shortened name.
func TestDescribeMatchesKernel(t *testing.T) {
	for _, n := range []Network{
		bridgeNet,
		{Name: "odd", Subnets: prefixes("10.99.8.0/21", "192.0.2.1/32", "2001:db8:8::/45", "fd00::1/128")},
		{Name: "v4only", Subnets: prefixes("172.16.0.0/12")},
		{Name: strings.Repeat("long-network-name.", 4) + "x", Subnets: prefixes("10.0.0.0/8")},
	} {
		t.Run(n.Name, func(t *testing.T) {
			sb := testnet.New(t)
			fd := nodeFd(t, sb.Node)
			if err := AddMasq(n, nil, "", InNetNS(fd)); err != nil {
				t.Fatal(err)
			}
			got := sb.Node.MustRun(t, "nft", "list", "table", "inet", TableName)
			if want := Describe(n); got != want {
				t.Errorf("nft list table:\n%s\nDescribe:\n%s", got, want)
			}
		})
	}
}
