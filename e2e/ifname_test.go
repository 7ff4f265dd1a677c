package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIfnameWithQuote: a CNI_IFNAME holding a '"' (legal for the kernel and
// for CNI) must not break the node's ruleset, whose listing is how
// firewalls save and restore it: after ADD (masquerade and a host port),
// `nft list ruleset` loads again with `nft -f`; CHECK then still finds the
// attachment's elements, and DEL removes them all.
func TestIfnameWithQuote(t *testing.T) {
	n := newNode(t)
	conf := portsConf(n.dataDir, `[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]`)
	a := n.container("quoted")
	a.ifName = `e"0`
	out := n.mustAdd(a, conf)

	node := n.sb.Node
	listing := node.MustRun(t, "nft", "list", "ruleset")
	saved := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(saved, []byte(listing), 0o600); err != nil {
		t.Fatal(err)
	}
	node.MustRun(t, "nft", "flush", "ruleset")
	if out, err := node.Run("nft", "-f", saved); err != nil {
		t.Fatalf("nft -f of the node's listing: %v\n%s\nlisting:\n%s", err, out, listing)
	}
	if r := n.call("CHECK", a, withPrevResult(conf, strings.TrimSpace(out))); r.ExitCode != 0 {
		t.Errorf("CHECK after the restore: exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	n.mustDel(a, conf)
	assertNoTrace(t, n, conf, "quoted")
}
