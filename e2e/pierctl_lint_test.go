package e2e

import (
	"strings"
	"testing"
)

// TestPierctlLint runs lint as a binary in a node whose uplink (the link of
// its default route) has MTU 1400, and checks its exit codes.
func TestPierctlLint(t *testing.T) {
	c := newCtlEnv(t)
	c.sb.Node.MustRun(t, "ip", "link", "add", "up0", "mtu", "1400", "type", "veth", "peer", "name", "up0p")
	c.sb.Node.MustRun(t, "ip", "addr", "add", "198.51.100.2/24", "dev", "up0")
	c.sb.Node.MustRun(t, "ip", "link", "set", "up0p", "up")
	c.sb.Node.MustRun(t, "ip", "link", "set", "up0", "up")
	c.sb.Node.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")

	conf := func(mtu, masq string) string {
		return `{ "cniVersion": "1.0.0", "name": "lintnet", "type": "pier", "bridge": "lint0", "isGateway": true,
  "ipMasq": ` + masq + `, "mtu": ` + mtu + `,
  "ipam": { "type": "pier-ipam", "subnet": "10.79.0.0/24", "routes": [ { "dst": "0.0.0.0/0" } ] } }`
	}
	ok := c.writeConf("10-ok.conf", conf("1400", "true"))
	r := c.mustCtl(0, "lint", "--conf-dir", c.confDir, ok)
	if !strings.Contains(r.stdout, `ok (network "lintnet")`) {
		t.Fatalf("lint ok:\n%s", r.stdout)
	}
	big := c.writeConf("20-big.json", strings.Replace(conf("1500", "true"), "lintnet", "bignet", 1))
	r = c.mustCtl(3, "lint", "--conf-dir", "", big)
	if !strings.Contains(r.stdout, "larger than the MTU 1400 of the node's uplink up0") {
		t.Fatalf("lint mtu:\n%s", r.stdout)
	}
	// Errors beat warnings; each file gets its findings; overlaps show.
	bad := c.writeConf("30-bad.json", strings.Replace(conf("1400", "false"), `"mtu"`, `"vlan": 3, "mtu"`, 1))
	r = c.mustCtl(1, "lint", "--conf-dir", c.confDir, big, bad, ok)
	for _, want := range []string{`"vlan": 3 is not supported`, "CNI error code 2", "20-big.json: warning: subnet 10.79.0.0/24 overlaps subnet 10.79.0.0/24",
		`10-ok.conf: warning: network "lintnet" is also defined in`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("lint output lacks %q:\n%s", want, r.stdout)
		}
	}
	js := c.mustCtl(1, "lint", "-o", "json", bad)
	if !strings.Contains(js.stdout, `"severity": "error"`) {
		t.Errorf("lint -o json:\n%s", js.stdout)
	}
	c.mustCtl(2, "lint")
}
