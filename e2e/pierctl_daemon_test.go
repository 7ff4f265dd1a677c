package e2e

import (
	"strings"
	"testing"
)

// TestPierctlLeasesFromPierd: with a network in daemon mode, `pierctl
// leases` and `status` read pierd (through the network's daemonSocket, or
// --socket), not the node's local store.
func TestPierctlLeasesFromPierd(t *testing.T) {
	c := newCtlEnv(t)
	p := startPierd(t, c.sb.Node.Path)
	conf := daemonConf(p.socket)
	c.writeConf("10-dmnet.conf", conf)
	ctr := c.container("ctl-dm-1")
	c.mustAdd(ctr, conf)

	for _, args := range [][]string{
		{"leases", "--conf-dir", c.confDir, "-o", "json"},
		{"leases", "--conf-dir", c.confDir, "--socket", p.socket, "-o", "json"},
	} {
		out := c.mustCtl(0, args...)
		if !strings.Contains(out.stdout, "10.47.0.2") || !strings.Contains(out.stdout, "ctl-dm-1") || !strings.Contains(out.stdout, "pierd at "+p.socket) {
			t.Fatalf("pierctl %s (exit %d) does not show pierd lease:\nstdout: %q\nstderr: %q", strings.Join(args, " "), out.code, out.stdout, out.stderr)
		}
	}
	st := c.mustCtl(0, c.withDirs("status", "dmnet", "-o", "json")...)
	if !strings.Contains(st.stdout, `"used": 1`) {
		t.Fatalf("status does not count pierd's lease:\n%s", st.stdout)
	}
	c.mustDel(ctr, conf)
	if out := c.mustCtl(0, "leases", "--conf-dir", c.confDir); strings.Contains(out.stdout, "ctl-dm-1") {
		t.Fatalf("lease still listed after DEL:\n%s", out.stdout)
	}
}
