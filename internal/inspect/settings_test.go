package inspect

import (
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/config"
)

// TestSettingsShowStateDir: a network with a delegated IPAM shows where
// Pier keeps its state (its "stateDir", or the default); a pier-ipam
// network, whose state is beside its store, does not.
func TestSettingsShowStateDir(t *testing.T) {
	for _, tc := range []struct {
		conf string
		want string // "" : no stateDir item
	}{
		{`"stateDir": "/srv/pier", "ipam": {"type": "host-local", "subnet": "10.9.0.0/24"}`, "stateDir: /srv/pier"},
		{`"ipam": {"type": "host-local", "subnet": "10.9.0.0/24"}`, "stateDir: " + config.DefaultDataDir},
		{`"ipam": {"type": "pier-ipam", "subnet": "10.9.0.0/24"}`, ""},
	} {
		stdin := []byte(`{"cniVersion": "1.0.0", "name": "n", "type": "pier", ` + tc.conf + `}`)
		c, err := config.LoadNetConf(stdin, "")
		if err != nil {
			t.Fatal(err)
		}
		var ic *config.IPAMConfig
		if c.IPAM.Type == config.IPAMType {
			if ic, err = config.LoadIPAM(stdin, ""); err != nil {
				t.Fatal(err)
			}
		}
		i := slices.IndexFunc(settings(c, ic), func(it Item) bool { return strings.HasPrefix(it.Value, "stateDir: ") })
		switch {
		case tc.want == "" && i >= 0:
			t.Errorf("%s: shows %q", tc.conf, settings(c, ic)[i].Value)
		case tc.want != "" && (i < 0 || settings(c, ic)[i].Value != tc.want):
			t.Errorf("%s: settings %+v, want %q", tc.conf, settings(c, ic), tc.want)
		}
	}
}
