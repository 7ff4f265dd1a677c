package nat

import (
	"encoding/json"
	"net/netip"
	"os"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// Every test that talks to the kernel runs its calls inside a sandbox
// namespace: either on a thread switched into it (node.Do) or through a
// netlink socket opened in it (InNetNS). Nothing here touches the host's own
// ruleset.

// inNode runs f on a thread inside the node namespace and fails t on error.
func inNode(t testing.TB, node *testnet.NS, what string, f func() error) {
	t.Helper()
	if err := node.Do(f); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// nodeFd opens the namespace file for InNetNS; closed when t ends.
func nodeFd(t testing.TB, node *testnet.NS) int {
	t.Helper()
	f, err := os.Open(node.Path)
	if err != nil {
		t.Fatalf("open %s: %v", node.Path, err)
	}
	t.Cleanup(func() { _ = f.Close() }) // read-only fd: nothing to lose
	return int(f.Fd())
}

// ruleset is the part of `nft -j list ruleset` the tests look at: objects
// of table inet pier, by name.
type ruleset struct {
	Tables []nftObj
	Maps   map[string]nftObj
	Chains map[string]nftObj
	Rules  []nftObj
}

type nftObj struct {
	Family  string            `json:"family"`
	Table   string            `json:"table"`
	Name    string            `json:"name"`
	Chain   string            `json:"chain"`
	Type    string            `json:"type"`
	Map     string            `json:"map"`
	Hook    string            `json:"hook"`
	Prio    int               `json:"prio"`
	Comment string            `json:"comment"`
	Elem    []json.RawMessage `json:"elem"`
	Expr    []map[string]json.RawMessage
}

// mapElem is one map element as nft shows it.
type mapElem struct {
	Owner string // element comment
	Goto  string // chain the verdict goes to
}

// elements decodes a verdict map's elements: [key, {"goto": {...}}] pairs
// whose key is "addr" or {"elem": {"val": "addr", "comment": ...}}.
func (o nftObj) elements(t testing.TB) map[netip.Addr]mapElem {
	t.Helper()
	out := map[netip.Addr]mapElem{}
	for _, raw := range o.Elem {
		var pair [2]json.RawMessage
		var verdict struct {
			Goto struct {
				Target string `json:"target"`
			} `json:"goto"`
		}
		if err := json.Unmarshal(raw, &pair); err != nil {
			t.Fatalf("element %s: %v", raw, err)
		}
		if err := json.Unmarshal(pair[1], &verdict); err != nil {
			t.Fatalf("element verdict %s: %v", pair[1], err)
		}
		var key string
		var withComment struct {
			Elem struct {
				Val     string `json:"val"`
				Comment string `json:"comment"`
			} `json:"elem"`
		}
		if json.Unmarshal(pair[0], &key) != nil {
			if err := json.Unmarshal(pair[0], &withComment); err != nil {
				t.Fatalf("element key %s: %v", pair[0], err)
			}
			key = withComment.Elem.Val
		}
		out[netip.MustParseAddr(key)] = mapElem{Owner: withComment.Elem.Comment, Goto: verdict.Goto.Target}
	}
	return out
}

// rulesIn returns the rules of one chain of table inet pier.
func (r ruleset) rulesIn(chain string) []nftObj {
	var out []nftObj
	for _, rule := range r.Rules {
		if rule.Chain == chain {
			out = append(out, rule)
		}
	}
	return out
}

// vmapFrom reports whether the rule is "saddr vmap @m".
func (o nftObj) vmapFrom(m string) bool {
	for _, e := range o.Expr {
		var v struct {
			Data string `json:"data"`
		}
		if raw, ok := e["vmap"]; ok && json.Unmarshal(raw, &v) == nil && v.Data == "@"+m {
			return true
		}
	}
	return false
}

// has reports whether the rule contains a statement of kind (e.g. "masquerade").
func (o nftObj) has(kind string) bool {
	for _, e := range o.Expr {
		if _, ok := e[kind]; ok {
			return true
		}
	}
	return false
}

func listRuleset(t testing.TB, node *testnet.NS) ruleset {
	t.Helper()
	out := node.MustRun(t, "nft", "-j", "list", "ruleset")
	rs, err := parseRuleset(out)
	if err != nil {
		t.Fatalf("nft -j list ruleset: %v\n%s", err, out)
	}
	return rs
}

func parseRuleset(out string) (ruleset, error) {
	var doc struct {
		Nftables []map[string]nftObj `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return ruleset{}, err
	}
	rs := ruleset{Maps: map[string]nftObj{}, Chains: map[string]nftObj{}}
	for _, item := range doc.Nftables {
		for kind, o := range item {
			if kind != "table" && (o.Family != "inet" || o.Table != TableName) {
				continue
			}
			switch kind {
			case "table":
				rs.Tables = append(rs.Tables, o)
			case "map", "set":
				rs.Maps[o.Name] = o
			case "chain":
				rs.Chains[o.Name] = o
			case "rule":
				rs.Rules = append(rs.Rules, o)
			}
		}
	}
	return rs, nil
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func mustSpec(t testing.TB, n Network) spec {
	t.Helper()
	s, err := newSpec(n)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
