package nat

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// sourcesOf lists the source check elements of port as "<addr>" (or
// "port" for its element) with their owner.
func sourcesOf(t *testing.T, fd int, port string) []string {
	t.Helper()
	n, err := ListNodeElements(InNetNS(fd))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range n.Sources {
		if e.Port != port {
			continue
		}
		what := "port"
		if e.Addr.IsValid() {
			what = e.Addr.String()
		}
		out = append(out, what+" "+e.Owner)
	}
	slices.Sort(out)
	return out
}

// TestSourceCheckElements: an attachment's source check is its port and
// one pair per address, owned by the attachment, in the ADD's batch (fast
// and slow path alike); Detach removes the port's elements and the
// masquerade elements in one call, tolerating keys already gone, and
// DelSources works on a table without the source sets (made by an older
// Pier) and without any table.
func TestSourceCheckElements(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	v4, v6 := netip.MustParseAddr("10.15.20.2"), netip.MustParseAddr("2001:db8:15::2")
	if err := DelSources("vethgone", []netip.Addr{v4}, InNetNS(fd)); err != nil {
		t.Fatalf("DelSources without any table: %v", err)
	}
	for i, port := range []string{"vetha", "vethb"} { // slow path, then fast path
		a := Attachment{Network: bridgeNet, Owner: fmt.Sprintf("c%d/eth0", i), Masq: []netip.Addr{v4.Next(), v6.Next()}, GuardGroup: testGroup,
			Sources: &SourceCheck{Port: port, Addrs: []netip.Addr{v4, v6, v4}}}
		if i == 1 {
			a.Masq = nil
		}
		out, err := Add(a, InNetNS(fd))
		if err != nil {
			t.Fatal(err)
		}
		if out.Rebuilt != (i == 0) {
			t.Errorf("ADD %d: rebuilt=%v", i, out.Rebuilt)
		}
		owner := NodeOwner(bridgeNet.Name, a.Owner)
		want := []string{v6.String() + " " + owner, v4.String() + " " + owner, "port " + owner}
		slices.Sort(want)
		if got := sourcesOf(t, fd, port); !slices.Equal(got, want) {
			t.Errorf("%s: elements %q, want %q", port, got, want)
		}
	}
	rules := node.MustRun(t, "nft", "list", "chain", "bridge", TableName, sourceChain)
	for _, want := range []string{"iifname . ip saddr @ipspoof-allowed4 return", "iifname . ip6 saddr @ipspoof-allowed6 return", `drop comment "pier: not the port's source address (ipspoofchk)"`} {
		if !strings.Contains(rules, want) {
			t.Errorf("chain %s lacks %q:\n%s", sourceChain, want, rules)
		}
	}
	if err := Detach(Detachment{Network: Network{Name: bridgeNet.Name}, Masq: []netip.Addr{v4.Next()},
		Sources: &SourceCheck{Port: "vetha", Addrs: []netip.Addr{v4, v6, netip.MustParseAddr("10.15.20.99")}}}, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if got := sourcesOf(t, fd, "vetha"); len(got) > 0 {
		t.Errorf("Detach left %q", got)
	}
	if els, _ := ListMasq(bridgeNet.Name, InNetNS(fd)); len(els) != 1 || els[0].Addr != v6.Next() {
		t.Errorf("masquerade elements after Detach of %s: %+v, want only %s", v4.Next(), els, v6.Next())
	}
	if got := sourcesOf(t, fd, "vethb"); len(got) != 3 {
		t.Errorf("Detach of vetha took vethb's: %q", got)
	}
	// A table of an older Pier, without the source sets.
	node.MustRun(t, "nft", "delete", "rule", "bridge", TableName, "prerouting", "handle", ruleHandle(t, node, "jump "+sourceChain))
	node.MustRun(t, "nft", "delete", "chain", "bridge", TableName, sourceChain)
	for _, s := range []string{sourcePorts, sourceAllowed4, sourceAllowed6} {
		node.MustRun(t, "nft", "delete", "set", "bridge", TableName, s)
	}
	if err := DelSources("vethb", []netip.Addr{v4}, InNetNS(fd)); err != nil {
		t.Errorf("DelSources on a table without the sets: %v", err)
	}
	if err := Detach(Detachment{Network: Network{Name: bridgeNet.Name}, Masq: []netip.Addr{v6.Next()}, Sources: &SourceCheck{Port: "vethb"}}, InNetNS(fd)); err != nil {
		t.Errorf("Detach on a table without the sets: %v", err)
	}
	if els, _ := ListMasq(bridgeNet.Name, InNetNS(fd)); len(els) != 0 {
		t.Errorf("masquerade elements left: %+v", els)
	}
}

// ruleHandle finds the handle of the rule of bridge pier's prerouting
// chain that contains text.
func ruleHandle(t *testing.T, node *testnet.NS, text string) string {
	t.Helper()
	for _, l := range strings.Split(node.MustRun(t, "nft", "-a", "list", "chain", "bridge", TableName, "prerouting"), "\n") {
		if strings.Contains(l, text) {
			if _, h, ok := strings.Cut(l, "# handle "); ok {
				return strings.TrimSpace(h)
			}
		}
	}
	t.Fatalf("no rule with %q", text)
	return ""
}
