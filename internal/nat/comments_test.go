package nat

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestRulesetWithOddIfnamesRestores guards every container's rules on a
// node against one interface name: a '"' is legal in CNI_IFNAME (the
// kernel refuses only '/', ':' and whitespace), and it used to land as is
// in element comments, so `nft list ruleset` printed a listing that `nft -f`
// refused, breaking the save/restore of the whole node's ruleset. Control
// characters and bytes that are not UTF-8, also legal, are covered too.
// After a restore, Pier still finds each owner's elements.
func TestRulesetWithOddIfnamesRestores(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	owners := []string{`c1/e"0`, "c2/e%0", "c3/e\x1b[0m", "c4/eth\xff", "c5/é'\\;#"}
	for i, o := range owners {
		ip := fmt.Sprintf("10.15.20.%d", i+2)
		a := Attachment{Network: bridgeNet, Owner: o, Masq: addrs(ip), GuardGroup: testGroup,
			Ports: webMappings(ip, uint16(8080+i))}
		if _, err := Add(a, InNetNS(fd)); err != nil {
			t.Fatalf("add %q: %v", o, err)
		}
	}
	listing := node.MustRun(t, "nft", "list", "ruleset")
	saved := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(saved, []byte(listing), 0o600); err != nil {
		t.Fatal(err)
	}
	node.MustRun(t, "nft", "flush", "ruleset")
	if out, err := node.Run("nft", "-f", saved); err != nil {
		t.Fatalf("nft -f of the listing: %v\n%s\nlisting:\n%s", err, out, listing)
	}
	if again := node.MustRun(t, "nft", "list", "ruleset"); again != listing {
		t.Errorf("restored ruleset differs:\n%s\nwant:\n%s", again, listing)
	}

	var masq []Element
	inNode(t, node, "ListMasq", func() (err error) {
		masq, err = ListMasq(bridgeNet.Name)
		return err
	})
	byOwner := map[string]string{}
	for _, e := range masq {
		byOwner[e.Owner] = e.Addr.String()
	}
	nodeEls, err := ListNodeElements(InNetNS(fd))
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range owners {
		if got, want := byOwner[StoredOwner(o)], fmt.Sprintf("10.15.20.%d", i+2); got != want {
			t.Errorf("owner %q: masquerade element %q, want %s (elements %v)", o, got, want, masq)
		}
		if n := nodeEls.Owned(NodeOwner(bridgeNet.Name, o)).Len(); n == 0 {
			t.Errorf("owner %q: no host-port elements found after the restore", o)
		}
	}
	if err := DelOwned(bridgeNet.Name, owners[0], InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if after, _ := ListNodeElements(InNetNS(fd)); after.Owned(NodeOwner(bridgeNet.Name, owners[0])).Len() != 0 {
		t.Errorf("DelOwned left elements of %q", owners[0])
	}
}
