package kube

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pier-cni/pier/internal/lint"
)

// TestRenderConflist: the conflist pierd writes is valid for the plugin
// and for pierctl lint, offers 1.0.0 and 1.1.0, carries the capabilities
// kubelet's hostPort and bandwidth need, one range set per family, and in
// daemon mode the socket instead of a data dir.
func TestRenderConflist(t *testing.T) {
	dir := t.TempDir()
	c := CNIConfig{Dir: dir, MTU: 1450, IPMasq: true, NonMasquerade: prefixes("10.244.0.0/16", "fd00:10:244::/56"), DataDir: "/var/lib/cni/pier"}
	ranges := prefixes("10.244.3.0/24", "fd00:10:244:3::/64")
	wrote, err := c.Write(ranges)
	if err != nil || !wrote {
		t.Fatalf("write: %v %v", wrote, err)
	}
	if wrote, err := c.Write(ranges); err != nil || wrote {
		t.Fatalf("a second write of the same conflist: wrote %v, %v", wrote, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, DefaultCNIFile))
	if err != nil {
		t.Fatal(err)
	}
	var cl struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
		Plugins     []struct {
			MTU     int             `json:"mtu"`
			NonMasq []string        `json:"nonMasqueradeCIDRs"`
			Caps    map[string]bool `json:"capabilities"`
			IPAM    struct {
				Ranges       [][]struct{ Subnet string } `json:"ranges"`
				Routes       []struct{ Dst string }      `json:"routes"`
				DataDir      string                      `json:"dataDir"`
				DaemonSocket string                      `json:"daemonSocket"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &cl); err != nil || len(cl.Plugins) != 1 {
		t.Fatalf("%v\n%s", err, b)
	}
	p := cl.Plugins[0]
	if cl.CNIVersion != "1.0.0" || !slices.Equal(cl.CNIVersions, []string{"1.0.0", "1.1.0"}) || p.MTU != 1450 ||
		!p.Caps["portMappings"] || !p.Caps["bandwidth"] || len(p.NonMasq) != 2 || len(p.IPAM.Ranges) != 2 ||
		p.IPAM.Ranges[1][0].Subnet != "fd00:10:244:3::/64" || len(p.IPAM.Routes) != 2 || p.IPAM.Routes[1].Dst != "::/0" ||
		p.IPAM.DataDir != "/var/lib/cni/pier" || p.IPAM.DaemonSocket != "" {
		t.Fatalf("conflist:\n%s", b)
	}
	res := lint.File(filepath.Join(dir, DefaultCNIFile), lint.Options{Uplinks: func() ([]lint.Uplink, error) { return nil, nil }})
	if errs, _ := res.Counts(); errs > 0 {
		t.Errorf("lint: %+v", res.Findings)
	}

	c.DaemonSocket = "/run/pier/pierd.sock"
	b, err = c.Render(ranges[:1])
	if err != nil {
		t.Fatal(err)
	}
	var daemon struct {
		Plugins []struct {
			IPAM map[string]any `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &daemon); err != nil || daemon.Plugins[0].IPAM["daemonSocket"] != c.DaemonSocket || daemon.Plugins[0].IPAM["dataDir"] != nil {
		t.Fatalf("daemon mode: %v\n%s", err, b)
	}
	// With network policy, and only then, the plugin enters the pods into
	// the policy maps (and checks their source addresses).
	for _, policy := range []bool{false, true} {
		c.NetworkPolicy = policy
		if b, err = c.Render(ranges[:1]); err != nil {
			t.Fatal(err)
		}
		var np struct {
			Plugins []map[string]any `json:"plugins"`
		}
		if err := json.Unmarshal(b, &np); err != nil || (np.Plugins[0]["networkPolicy"] == true) != policy {
			t.Errorf("network policy %v: %v\n%s", policy, err, b)
		}
	}
	if _, err := c.Render(nil); err == nil {
		t.Error("a conflist without ranges rendered")
	}
	if _, err := (CNIConfig{Network: "bad/name"}).Render([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}); err == nil {
		t.Error("a conflist the plugin would refuse rendered")
	}
}
