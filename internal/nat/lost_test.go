package nat

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestLostRules guards against `nft flush table`, which removes the rules
// of Pier's tables and keeps their sets, elements and the bridges'
// markers: an ADD's batch of element additions still succeeded into a
// table that drops and DNATs nothing. Now the fast path notices (chain
// localnet empty) and takes the slow path; FindLostRules names what was
// emptied, RepairRules refills what needs no network's subnets, and a
// network's masquerade chains come back with an attachment added with
// ForceSetup.
func TestLostRules(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	ports := []PortMapping{{Protocol: "tcp", HostPort: 8080, ContainerIP: netip.MustParseAddr("10.15.20.2"), ContainerPort: 80, Subnet: netip.MustParsePrefix("10.15.20.0/24")}}
	a := Attachment{Network: bridgeNet, Owner: "x/eth0", Masq: addrs("10.15.20.2"), Ports: ports, GuardGroup: testGroup, Bridge: "br0"}
	if _, err := Add(a, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if err := SetupBridge(BridgeSetup{Bridge: "br0"}, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if lost, err := FindLostRules(InNetNS(fd)); err != nil || lost.Any() {
		t.Fatalf("a complete table: lost %v, %v", lost, err)
	}
	rulesOK := func(when string) {
		t.Helper()
		rs := node.MustRun(t, "nft", "list", "ruleset")
		for _, want := range []string{"ip daddr 127.0.0.0/8 drop", "dnat ip to", "masquerade comment", "nd-router-advert"} {
			if !strings.Contains(rs, want) {
				t.Errorf("%s: the ruleset lacks %q:\n%s", when, want, rs)
			}
		}
	}

	// The fast path notices.
	node.MustRun(t, "nft", "flush", "table", "inet", "pier")
	if out, err := Add(a, InNetNS(fd)); err != nil || !out.Rebuilt || out.BridgeMissing {
		t.Fatalf("Add after nft flush table: %+v, %v; want the slow path, the marker found", out, err)
	}
	rulesOK("after nft flush table inet pier and an Add")

	// What a restore does: find, repair the shared chains, force one
	// attachment per network.
	node.MustRun(t, "nft", "flush", "table", "inet", "pier")
	node.MustRun(t, "nft", "flush", "table", "bridge", "pier")
	lost, err := FindLostRules(InNetNS(fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range []string{"inet pier localnet", "inet pier forward", "inet pier hostports-prerouting", "bridge pier prerouting", "inet pier " + bridgeNet.Name + "-postrouting"} {
		if !slices.Contains(lost.Chains, ch) {
			t.Errorf("FindLostRules: %v lacks %q", lost.Chains, ch)
		}
	}
	if !lost.Shared() || !lost.Network(bridgeNet.Name) || lost.Network("other") {
		t.Errorf("FindLostRules: shared %v, network %v, other %v", lost.Shared(), lost.Network(bridgeNet.Name), lost.Network("other"))
	}
	if err := RepairRules(lost, testGroup, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if lost, err = FindLostRules(InNetNS(fd)); err != nil || lost.Shared() || !lost.Network(bridgeNet.Name) {
		t.Fatalf("after RepairRules: %v (shared %v), %v; want only the network's chains", lost, lost.Shared(), err)
	}
	b := a
	b.Ports = nil
	if out, err := Add(b, InNetNS(fd), ForceSetup()); err != nil || !out.Rebuilt {
		t.Fatalf("Add with ForceSetup: %+v, %v", out, err)
	}
	if lost, err = FindLostRules(InNetNS(fd)); err != nil || lost.Any() {
		t.Fatalf("after a forced setup: lost %v, %v", lost, err)
	}
	rulesOK("after RepairRules and a forced Add")
}

// BenchmarkFastPathCheck is what noticing a flushed table costs an ADD's
// fast path: "add" is one attachment's Add (its batch and the read of
// chain localnet's rules) and Del, "check" the read alone.
func BenchmarkFastPathCheck(b *testing.B) {
	sb := testnet.New(b)
	fd := nodeFd(b, sb.Node)
	a := Attachment{Network: bridgeNet, Owner: "x/eth0", Masq: addrs("10.15.20.2"), GuardGroup: testGroup, Bridge: "br0"}
	if _, err := Add(a, InNetNS(fd)); err != nil {
		b.Fatal(err)
	}
	if err := SetupBridge(BridgeSetup{Bridge: "br0"}, InNetNS(fd)); err != nil {
		b.Fatal(err)
	}
	b.Run("add", func(b *testing.B) {
		for b.Loop() {
			if out, err := Add(a, InNetNS(fd)); err != nil || out.Rebuilt {
				b.Fatal(out, err)
			}
		}
	})
	b.Run("check", func(b *testing.B) {
		conn, err := dial([]Option{InNetNS(fd)})
		if err != nil {
			b.Fatal(err)
		}
		defer closeConn(conn, nil)
		for b.Loop() {
			if lost, err := baseLost(conn); err != nil || lost {
				b.Fatal(lost, err)
			}
		}
	})
}
