package e2e

import (
	"strings"
	"testing"
)

// TestCheck runs CHECK with the ADD's result as prevResult: it passes on an
// intact attachment, and names what is missing once something is taken away.
func TestCheck(t *testing.T) {
	n := newNode(t)
	conf := classicConf("1.0.0", n.dataDir)
	c := n.container("chk-1")
	checkConf := withPrevResult(conf, n.mustAdd(c, conf))
	if r := n.call("CHECK", c, checkConf); r.ExitCode != 0 {
		t.Fatalf("CHECK on an intact attachment: %s %s", r.Stdout, r.Stderr)
	}
	// A chained plugin may add an address: tolerated.
	c.ns.MustRun(t, "ip", "addr", "add", "192.0.2.9/32", "dev", "eth0")
	if r := n.call("CHECK", c, checkConf); r.ExitCode != 0 {
		t.Fatalf("CHECK with an extra address: %s %s", r.Stdout, r.Stderr)
	}

	c.ns.MustRun(t, "ip", "route", "del", "1.1.1.1/32")
	msg := cniError(t, n.call("CHECK", c, checkConf), 3)
	if !strings.Contains(msg, "1.1.1.1/32") {
		t.Errorf("CHECK message does not name the missing route: %q", msg)
	}
	n.sb.Node.MustRun(t, "nft", "flush", "map", "inet", "pier", "mybridge-masq4")
	msg = cniError(t, n.call("CHECK", c, checkConf), 3)
	if !strings.Contains(msg, "10.15.20.2") || !strings.Contains(msg, "masquerade") {
		t.Errorf("CHECK message does not name the missing masquerade element: %q", msg)
	}
	// Old configs cannot CHECK (spec: CHECK exists from 0.4.0 on).
	old := strings.Replace(checkConf, `"cniVersion": "1.0.0"`, `"cniVersion": "0.3.1"`, 1)
	cniError(t, n.call("CHECK", c, old), 1)
	n.mustDel(c, conf)
	// After DEL, CHECK reports the attachment as unknown.
	cniError(t, n.call("CHECK", c, checkConf), 3)
}
