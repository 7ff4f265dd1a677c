package confdir

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pier-cni/pier/internal/config"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		// A list: pier's plugin is found, name and cniVersion injected.
		"10-a.conflist": `{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"pier","ipam":{"type":"pier-ipam","subnet":"10.1.0.0/24"}},{"type":"portmap"}]}`,
		// A single plugin of another type with pier-ipam.
		"20-b.conf": `{"cniVersion":"1.0.0","name":"b","type":"macvlan","ipam":{"type":"pier-ipam","subnet":"10.2.0.0/24"}}`,
		// Not Pier's at all: its IPAM is still decoded for comparisons.
		"30-c.json": `{"cniVersion":"1.0.0","name":"c","type":"bridge","ipam":{"type":"host-local","subnet":"10.3.0.0/24"}}`,
		// Refused by pier, as the plugin would refuse it.
		"40-d.conf": `{"cniVersion":"1.0.0","name":"d","type":"pier","vlan":3,"ipam":{"type":"pier-ipam","subnet":"10.4.0.0/24"}}`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a, err := Load(dir, "a")
	if err != nil || a.PluginIndex != 0 || a.Conf == nil || a.Conf.Name != "a" || a.File != filepath.Join(dir, "10-a.conflist") {
		t.Fatalf("a: %+v %v", a, err)
	}
	if ic, err := a.PierIPAM(); err != nil || ic.Name != "a" || ic.DataDir != config.DefaultDataDir {
		t.Fatalf("a ipam: %+v %v", ic, err)
	}
	b, err := Load(dir, "b")
	if err != nil || b.Conf != nil || b.IPAM == nil || b.PluginIndex != 0 {
		t.Fatalf("b: %+v %v", b, err)
	}
	c, err := Load(dir, "c")
	if err != nil || c.PluginIndex != -1 || c.IPAM == nil || c.IPAM.RangeSets[0][0].Subnet.String() != "10.3.0.0/24" {
		t.Fatalf("c: %+v %v", c, err)
	}
	if _, err := c.PierIPAM(); err == nil {
		t.Fatal("c: PierIPAM accepted a host-local network")
	}
	d, err := Load(dir, "d")
	if err != nil || d.ConfErr == nil {
		t.Fatalf("d: %+v %v", d, err)
	}
	if _, err := Load(dir, "nosuch"); !ErrNotFound(err) {
		t.Fatalf("nosuch: %v", err)
	}
	all, errs := All(dir)
	if len(all) != 4 || len(errs) != 0 {
		t.Fatalf("All: %d networks, %v", len(all), errs)
	}
	if n, err := FromBytes([]byte(files["10-a.conflist"])); err != nil || n.Conf == nil {
		t.Fatalf("FromBytes: %v", err)
	}
}
