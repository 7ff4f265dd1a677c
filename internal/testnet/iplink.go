package testnet

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// MustDo runs f on a thread inside the sandbox's node namespace and fails
// the test if it returns an error: the link packages act on the caller's
// namespace, and tests must never act on the host's.
func (s *Sandbox) MustDo(t testing.TB, f func() error) {
	t.Helper()
	if err := s.Node.Do(f); err != nil {
		t.Fatal(err)
	}
}

// IPLink is the part of `ip -j -d addr show` output the tests look at.
type IPLink struct {
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

// Links returns `ip -j -d addr show` of the namespace (links with their
// addresses).
func (n *NS) Links(t testing.TB) []IPLink {
	t.Helper()
	var out []IPLink
	if err := json.Unmarshal([]byte(n.MustRun(t, "ip", "-j", "-d", "addr", "show")), &out); err != nil {
		t.Fatalf("parse ip -j output: %v", err)
	}
	return out
}

// Link returns the link called name, failing the test if it is absent.
func (n *NS) Link(t testing.TB, name string) IPLink {
	t.Helper()
	for _, l := range n.Links(t) {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("no link %s in %s", name, n.Name)
	return IPLink{}
}

// LinkNames returns the names of the namespace's links, sorted.
func (n *NS) LinkNames(t testing.TB) []string {
	t.Helper()
	var names []string
	for _, l := range n.Links(t) {
		names = append(names, l.Name)
	}
	slices.Sort(names)
	return names
}

// GlobalAddrs returns the link's addresses without link-local ones.
func (l IPLink) GlobalAddrs() []netip.Prefix {
	var out []netip.Prefix
	for _, a := range l.AddrInfo {
		if a.Scope == "link" {
			continue
		}
		out = append(out, netip.PrefixFrom(netip.MustParseAddr(a.Local), a.PrefixLen))
	}
	return out
}

// Routes returns `ip -j route` of family ("-4" or "-6") on dev as
// "dst via gw" strings (without "via" for on-link routes), sorted,
// excluding the kernel's own routes.
func (n *NS) Routes(t testing.TB, family, dev string) []string {
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

// Prefixes parses ss, panicking on a malformed one (test literals).
func Prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// SortedStrings returns the prefixes as sorted strings, for comparisons.
func SortedStrings(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	slices.Sort(out)
	return out
}

// WantErrContains fails the test unless err is non-nil and its message
// contains every one of parts.
func WantErrContains(t testing.TB, err error, parts ...string) {
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
