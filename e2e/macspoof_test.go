package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/veth"
)

func spoofConf(dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "spoofnet", "type": "pier", "bridge": "pier-spoof",
  "isGateway": true, "macspoofchk": true,
  "ipam": {"type": "pier-ipam", "subnet": "10.45.0.0/24", "dataDir": %q}}`, dataDir)
}

// TestMACSpoofCheck: with macspoofchk, frames a container sends from a MAC
// other than its interface's are dropped at its bridge port — a ping to
// its neighbour fails while the MAC is changed, works again once it is
// restored, and works with the changed MAC once the rule is gone; CHECK
// verifies the check, DEL removes it.
func TestMACSpoofCheck(t *testing.T) {
	n := newNode(t)
	conf := spoofConf(n.dataDir)
	a, b := n.container("spoofer"), n.container("honest")
	out := n.mustAdd(a, conf, "CNI_ARGS=IgnoreUnknown=1;MAC=02:00:00:00:45:02")
	n.mustAdd(b, conf)

	ping := func() error {
		_, err := a.ns.Run("ping", "-c1", "-W1", "10.45.0.3")
		return err
	}
	if err := ping(); err != nil {
		t.Fatalf("ping with the container's own MAC: %v", err)
	}
	if r := n.call("CHECK", a, withPrevResult(conf, strings.TrimSpace(out))); r.ExitCode != 0 {
		t.Errorf("CHECK: exit %d: %s", r.ExitCode, r.Stdout)
	}
	set := n.sb.Node.MustRun(t, "nft", "list", "set", "bridge", "pier", "macspoof-allowed")
	if want := fmt.Sprintf("%q . 02:00:00:00:45:02", veth.HostName("spoofer", "eth0")); !strings.Contains(set, want) {
		t.Errorf("macspoof-allowed lacks %s:\n%s", want, set)
	}

	// Another source MAC: the neighbour's ARP cache is bypassed by
	// flushing both sides, so every frame of the ping carries the new MAC.
	a.ns.MustRun(t, "ip", "link", "set", "dev", "eth0", "address", "02:00:00:00:66:66")
	a.ns.MustRun(t, "ip", "neigh", "flush", "dev", "eth0")
	b.ns.MustRun(t, "ip", "neigh", "flush", "dev", "eth0")
	if err := ping(); err == nil {
		t.Error("ping from a spoofed source MAC got through")
	}
	a.ns.MustRun(t, "ip", "link", "set", "dev", "eth0", "address", "02:00:00:00:45:02")
	a.ns.MustRun(t, "ip", "neigh", "flush", "dev", "eth0")
	if err := ping(); err != nil {
		t.Errorf("ping with the MAC restored: %v", err)
	}
	// And the check is what dropped it: without its rule the spoofed MAC
	// gets through.
	n.sb.Node.MustRun(t, "nft", "flush", "chain", "bridge", "pier", "prerouting")
	a.ns.MustRun(t, "ip", "link", "set", "dev", "eth0", "address", "02:00:00:00:66:66")
	a.ns.MustRun(t, "ip", "neigh", "flush", "dev", "eth0")
	b.ns.MustRun(t, "ip", "neigh", "flush", "dev", "eth0")
	if err := ping(); err != nil {
		t.Errorf("ping from another MAC without the check: %v", err)
	}

	n.mustDel(a, conf)
	if set := n.sb.Node.MustRun(t, "nft", "list", "table", "bridge", "pier"); strings.Contains(set, "spoofnet/spoofer/") {
		t.Errorf("MAC check of a deleted container left:\n%s", set)
	}
	n.mustDel(b, conf)
}
