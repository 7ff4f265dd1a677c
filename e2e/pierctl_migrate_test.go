package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPierctlMigrateHostLocal switches a network from the reference bridge +
// host-local (Debian's /usr/lib/cni, run for real through pierctl add) to
// pier + pier-ipam: migrate imports host-local's reservations, so the next
// ADD gets a fresh address and pier can DEL the migrated containers.
func TestPierctlMigrateHostLocal(t *testing.T) {
	if _, err := os.Stat("/usr/lib/cni/host-local"); err != nil {
		t.Skip("needs Debian's containernetworking-plugins")
	}
	c := newCtlEnv(t)
	hlDir := t.TempDir()
	c.writeConf("10-mignet.conf", fmt.Sprintf(`{ "cniVersion": "1.0.0", "name": "mignet", "type": "bridge",
  "bridge": "mig0", "isGateway": true,
  "ipam": { "type": "host-local", "subnet": "10.78.0.0/24", "dataDir": %q } }`, hlDir))
	c1, c2, c3 := c.sb.Container(), c.sb.Container(), c.sb.Container()
	c.mustCtl(0, c.withDirs("add", "mignet", c1.Path, "--container-id", "hl-1")...)
	c.mustCtl(0, c.withDirs("add", "mignet", c2.Path, "--container-id", "hl-2")...)
	if b, err := os.ReadFile(filepath.Join(hlDir, "mignet", "10.78.0.2")); err != nil || !strings.HasPrefix(string(b), "hl-1") {
		t.Fatalf("host-local's record of 10.78.0.2: %q %v", b, err)
	}

	// With host-local's config still in place, its dataDir is the source.
	migrate := func(extra ...string) ctlRun {
		return c.ctl(append([]string{"migrate", "host-local", "--network", "mignet", "--conf-dir", c.confDir, "--to-data-dir", c.dataDir}, extra...)...)
	}
	dry := migrate()
	if dry.code != 0 || !strings.Contains(dry.stdout, "dry run: 2 to import") {
		t.Fatalf("dry run: exit %d\n%s%s", dry.code, dry.stdout, dry.stderr)
	}
	if files := storeFiles(t, c.dataDir); len(files) != 0 {
		t.Fatalf("dry run wrote %v", files)
	}
	if r := migrate("--apply"); r.code != 0 || !strings.Contains(r.stdout, "applied: 2 imported") {
		t.Fatalf("apply: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := migrate("--apply", "-o", "json"); r.code != 0 || strings.Count(r.stdout, `"present"`) != 2 {
		t.Fatalf("second apply: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The switch: same network, same bridge, now pier and pier-ipam.
	c.writeConf("10-mignet.conf", fmt.Sprintf(`{ "cniVersion": "1.0.0", "name": "mignet", "type": "pier",
  "bridge": "mig0", "isGateway": true,
  "ipam": { "type": "pier-ipam", "subnet": "10.78.0.0/24", "dataDir": %q } }`, c.dataDir))
	ls := c.mustCtl(0, "leases", "--conf-dir", c.confDir)
	for _, want := range []string{"10.78.0.2  hl-1", "10.78.0.3  hl-2"} {
		if !strings.Contains(strings.Join(strings.Fields(ls.stdout), "  "), want) {
			t.Errorf("leases lack %q:\n%s", want, ls.stdout)
		}
	}
	res := c.mustCtl(0, c.withDirs("add", "mignet", c3.Path, "--container-id", "pier-3")...)
	if !strings.Contains(res.stdout, `"10.78.0.4/24"`) {
		t.Fatalf("first pier ADD after the migration:\n%s", res.stdout)
	}
	c3.MustRun(t, "ping", "-c1", "-W2", "10.78.0.2") // the migrated container, through the same bridge
	c.mustCtl(0, c.withDirs("del", "mignet", c1.Path, "--container-id", "hl-1")...)
	if ls := c.mustCtl(0, "leases", "--conf-dir", c.confDir); strings.Contains(ls.stdout, "hl-1") {
		t.Fatalf("pier's DEL of a migrated container left its lease:\n%s", ls.stdout)
	}
	c.mustCtl(2, "migrate", "host-local")
	c.mustCtl(2, "migrate", "dhcp", "--network", "mignet")
}
