package firewall

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// Each case builds a host filter in a fresh node namespace, then checks
// that Ensure puts the bridge's accepts where that filter reads them, in a
// form its own tool reads back, that Scan then finds them, and that Remove
// takes them (and any chain of Pier's) away and leaves the host's own
// rules.
func TestEnsureRemove(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tool    string
		setup   [][]string
		where   string
		listing []string // what the tool lists
		want    []string // in the listing after Ensure
		kept    []string // still in the listing after Remove
	}{
		{
			name: "Docker on iptables-nft", tool: "iptables-nft",
			setup: [][]string{
				{"iptables-nft", "-P", "FORWARD", "DROP"}, {"iptables-nft", "-N", "DOCKER-USER"},
				{"iptables-nft", "-A", "DOCKER-USER", "-j", "RETURN"}, {"iptables-nft", "-A", "FORWARD", "-j", "DOCKER-USER"},
			},
			where:   "ip filter DOCKER-USER",
			listing: []string{"iptables-nft", "-S"},
			want: []string{
				`-A DOCKER-USER -i br0 -m comment --comment "pier: forward of bridge br0" -j ACCEPT`,
				`-A DOCKER-USER -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "pier: forward of bridge br0" -j ACCEPT`,
				`-A DOCKER-USER -o br0 -m conntrack --ctstate DNAT -m comment --comment "pier: forward of bridge br0" -j ACCEPT`,
			},
			kept: []string{"-A DOCKER-USER -j RETURN", "-A FORWARD -j DOCKER-USER"},
		},
		{
			name: "iptables-nft without Docker", tool: "iptables-nft",
			setup:   [][]string{{"iptables-nft", "-P", "FORWARD", "DROP"}},
			where:   "ip filter PIER-FORWARD",
			listing: []string{"iptables-nft", "-S"},
			want: []string{
				`-A FORWARD -m comment --comment "pier: forwarded traffic of Pier bridges" -j PIER-FORWARD`,
				`-A PIER-FORWARD -i br0 -m comment --comment "pier: forward of bridge br0" -j ACCEPT`,
			},
			kept: []string{"-P FORWARD DROP"},
		},
		{
			name: "iptables-legacy", tool: "iptables-legacy",
			setup:   [][]string{{"iptables-legacy", "-P", "FORWARD", "DROP"}, {"iptables-legacy", "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT"}},
			where:   "iptables-legacy filter PIER-FORWARD",
			listing: []string{"iptables-legacy", "-S"},
			want: []string{
				`-A FORWARD -m comment --comment "pier: forwarded traffic of Pier bridges" -j PIER-FORWARD`,
				`-A PIER-FORWARD -o br0 -m conntrack --ctstate DNAT -m comment --comment "pier: forward of bridge br0" -j ACCEPT`,
			},
			kept: []string{"-A FORWARD -i eth9 -j ACCEPT"},
		},
		{
			name: "nftables inet filter", tool: "nft",
			setup:   [][]string{{"nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }; add rule inet filter forward iifname eth9 accept"}},
			where:   "inet filter forward",
			listing: []string{"nft", "list", "ruleset"},
			want: []string{
				`iifname "br0" counter packets 0 bytes 0 accept comment "pier: forward of bridge br0"`,
				`oifname "br0" ct state established,related counter packets 0 bytes 0 accept comment "pier: forward of bridge br0"`,
				`oifname "br0" ct status dnat counter packets 0 bytes 0 accept comment "pier: forward of bridge br0"`,
			},
			kept: []string{`iifname "eth9" accept`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				t.Skipf("needs %s", tc.tool)
			}
			node := testnet.New(t).Node
			for _, args := range tc.setup {
				node.MustRun(t, args...)
			}
			h := New()
			var places []Place
			do(t, node, func() (err error) { places, err = h.Scan("br0"); return err })
			if len(places) != 1 || places[0].Where != tc.where || places[0].Present {
				t.Fatalf("Scan before Ensure: %v, want one place %s without the accepts", places, tc.where)
			}
			for range 2 { // the second Ensure finds them and adds nothing
				do(t, node, func() (err error) { places, err = h.Ensure("br0"); return err })
			}
			listing := node.MustRun(t, tc.listing...)
			for _, w := range tc.want {
				if strings.Count(listing, w) != 1 {
					t.Errorf("after Ensure, want once %q in:\n%s", w, listing)
				}
			}
			do(t, node, func() (err error) { places, err = h.Scan("br0"); return err })
			if len(Missing(places)) != 0 || len(places) != 1 {
				t.Errorf("Scan after Ensure: %v", places)
			}
			for range 2 {
				do(t, node, func() error { return h.Remove("br0") })
			}
			listing = node.MustRun(t, tc.listing...)
			if strings.Contains(listing, "pier") || strings.Contains(listing, "PIER") {
				t.Errorf("after Remove, Pier's rules or chains are left:\n%s", listing)
			}
			for _, k := range tc.kept {
				if !strings.Contains(listing, k) {
					t.Errorf("Remove took the host's %q:\n%s", k, listing)
				}
			}
		})
	}
}

// TestScanIgnoresAccepting: filters that accept forwarded traffic need
// nothing, and a node without filters has no places.
func TestScanIgnoresAccepting(t *testing.T) {
	node := testnet.New(t).Node
	h := New()
	scan := func() []Place {
		var ps []Place
		do(t, node, func() (err error) { ps, err = h.Scan("br0"); return err })
		return ps
	}
	if ps := scan(); len(ps) != 0 {
		t.Fatalf("a bare node: %v", ps)
	}
	node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy accept; }; add rule inet filter forward ct state invalid drop")
	if _, err := exec.LookPath("iptables-legacy"); err == nil {
		node.MustRun(t, "iptables-legacy", "-A", "FORWARD", "-i", "eth9", "-j", "DROP")
	}
	if ps := scan(); len(ps) != 0 {
		t.Fatalf("filters that accept: %v", ps)
	}
	node.MustRun(t, "nft", "add rule inet filter forward counter reject")
	if ps := scan(); len(ps) != 1 || !strings.Contains(ps[0].Why, "unconditional") {
		t.Fatalf("a final reject: %v", ps)
	}
}

func do(t *testing.T, node *testnet.NS, f func() error) {
	t.Helper()
	if err := node.Do(f); err != nil {
		t.Fatal(err)
	}
}
