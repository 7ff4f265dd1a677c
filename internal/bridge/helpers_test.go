package bridge

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// inNode runs f on a thread inside the sandbox's node namespace: every call
// of this package acts on the caller's namespace, and tests must never act
// on the host's.
func inNode(t testing.TB, sb *testnet.Sandbox, f func() error) {
	t.Helper()
	if err := sb.Node.Do(f); err != nil {
		t.Fatal(err)
	}
}

// ipLink is the part of `ip -j -d link` output the tests look at.
type ipLink struct {
	Name     string   `json:"ifname"`
	Index    int      `json:"ifindex"`
	Address  string   `json:"address"`
	MTU      int      `json:"mtu"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	Alias    string   `json:"ifalias"`
	Promisc  int      `json:"promiscuity"`
	LinkInfo struct {
		Kind      string `json:"info_kind"`
		SlaveKind string `json:"info_slave_kind"`
		SlaveData struct {
			Hairpin bool `json:"hairpin"`
		} `json:"info_slave_data"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
		Tentative bool   `json:"tentative"`
	} `json:"addr_info"`
}

// links returns `ip -j -d addr show` of namespace n (links with addresses).
func links(t testing.TB, n *testnet.NS) []ipLink {
	t.Helper()
	var out []ipLink
	if err := json.Unmarshal([]byte(n.MustRun(t, "ip", "-j", "-d", "addr", "show")), &out); err != nil {
		t.Fatalf("parse ip -j output: %v", err)
	}
	return out
}

// link returns the link called name in n, failing the test if it is absent.
func link(t testing.TB, n *testnet.NS, name string) ipLink {
	t.Helper()
	for _, l := range links(t, n) {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("no link %s in %s", name, n.Name)
	return ipLink{}
}

// linkNames returns the names of n's links, sorted.
func linkNames(t testing.TB, n *testnet.NS) []string {
	t.Helper()
	var names []string
	for _, l := range links(t, n) {
		names = append(names, l.Name)
	}
	slices.Sort(names)
	return names
}

// globalAddrs returns l's addresses without link-local ones, as prefixes.
func globalAddrs(t testing.TB, l ipLink) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, a := range l.AddrInfo {
		if a.Scope == "link" {
			continue
		}
		out = append(out, netip.PrefixFrom(netip.MustParseAddr(a.Local), a.PrefixLen))
	}
	return out
}

// routes returns `ip -j route` of family ("-4" or "-6") on dev in n as
// "dst via gw" strings (without "via" for on-link routes), excluding the
// kernel's own routes.
func routes(t testing.TB, n *testnet.NS, family, dev string) []string {
	t.Helper()
	var rs []struct {
		Dst      string `json:"dst"`
		Gateway  string `json:"gateway"`
		Protocol string `json:"protocol"`
	}
	out := n.MustRun(t, "ip", "-j", family, "route", "show", "dev", dev)
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("parse ip -j route: %v: %s", err, out)
	}
	var got []string
	for _, r := range rs {
		if r.Protocol == "kernel" {
			continue
		}
		s := r.Dst
		if r.Gateway != "" {
			s += " via " + r.Gateway
		}
		got = append(got, s)
	}
	slices.Sort(got)
	return got
}

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func sortedPrefixes(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	slices.Sort(out)
	return out
}

func wantErrContains(t testing.TB, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error containing %q, got nil", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not contain %q", err, p)
		}
	}
}
