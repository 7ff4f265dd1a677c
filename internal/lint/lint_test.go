package lint

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/firewall"
)

const good = `{ "cniVersion": "1.0.0", "name": "good", "type": "pier", "bridge": "br0",
  "isGateway": true, "ipMasq": true, "mtu": 1400,
  "ipam": { "type": "pier-ipam", "subnet": "10.1.0.0/24", "routes": [ { "dst": "0.0.0.0/0" } ] } }`

func TestLint(t *testing.T) {
	uplinks := func() ([]Uplink, error) { return []Uplink{{Name: "eth0", MTU: 1450}}, nil }
	cases := []struct {
		name, file, content string
		// want lists one substring per finding, "E:" or "W:" first.
		want []string
	}{
		{"clean", "a.conf", good, nil},
		{"typo in a key", "a.conf", strings.Replace(good, `"ipMasq"`, `"ipMasqq"`, 1),
			[]string{`W:unknown key "ipMasqq"`, `W:"ipMasq" is false`}},
		{"unknown ipam and range keys", "a.conflist", `{ "cniVersion": "1.0.0", "name": "l", "extra": 1, "plugins": [
		  { "type": "pier", "ipMasq": true, "ipam": { "type": "pier-ipam", "subnett": "x", "ranges": [[ { "subnet": "10.2.0.0/24", "gw": "10.2.0.1" } ]] } } ] }`,
			[]string{`W:unknown key "extra" in the list`, `W:unknown key "subnett" in plugins[0] ipam: pier ignores it (did you mean "subnet"?)`, `W:unknown key "gw" in plugins[0] ipam.ranges[0][0]`}},
		{"invalid subnet", "a.conf", strings.Replace(good, "10.1.0.0/24", "10.1.0.1/24", 1),
			[]string{"E:host bits set", "E:code 7"}},
		{"unsupported key", "a.conf", strings.Replace(good, `"mtu": 1400`, `"vlan": 5`, 1),
			[]string{`E:"vlan": 5 is not supported`, "E:code 2"}},
		{"mtu above the uplink", "a.conf", strings.Replace(good, "1400", "9000", 1),
			[]string{"W:larger than the MTU 1450 of the node's uplink eth0"}},
		{"default route without masquerade", "a.conf", strings.Replace(good, `"ipMasq": true`, `"ipMasq": false`, 1),
			[]string{`W:default route but "ipMasq" is false`}},
		{"overlap with another network", "a.conf", strings.Replace(good, "10.1.0.0/24", "10.9.0.0/16", 1),
			[]string{`W:subnet 10.9.0.0/16 overlaps subnet 10.9.1.0/24 of network "other"`}},
		{"not a pier network", "a.conf", `{ "cniVersion": "1.0.0", "name": "b", "type": "bridge", "ipam": { "type": "host-local", "subnet": "10.5.0.0/24" } }`,
			[]string{"W:pier never reads it"}},
		{"not JSON", "a.conf", `{ "name": `, []string{"E:cannot be decoded"}},
		{"host drops forwarded traffic, Pier told to leave it", "a.conf", strings.Replace(good, `"mtu": 1400`, `"firewallBackend": "none"`, 1),
			[]string{`W:the node drops forwarded traffic (ip filter FORWARD has policy drop) and "firewallBackend" is "none"`}},
		{"host drops forwarded traffic, Pier handles it", "a.conf", strings.Replace(good, `"mtu": 1400`, `"firewallBackend": "auto"`, 1), nil},
		{"bridge in an operator's firewalld zone", "a.conf", good,
			[]string{`W:firewalld: bridge is in firewalld zone internal, which someone else chose (remove the bridge from that zone to let Pier put it in its zone "pier"`}},
		{"unsupported firewall backend", "a.conf", strings.Replace(good, `"mtu": 1400`, `"firewallBackend": "iptables"`, 1),
			[]string{`E:"firewallBackend": "iptables" is not supported`, "E:code 2"}},
		{"unsupported ingress policy", "a.conf", strings.Replace(good, `"mtu": 1400`, `"ingressPolicy": "isolated"`, 1),
			[]string{`E:"ingressPolicy": "isolated" is not supported`, "E:code 2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			other := `{ "cniVersion": "1.0.0", "name": "other", "type": "bridge", "ipam": { "type": "host-local", "subnet": "10.9.1.0/24" } }`
			if err := os.WriteFile(filepath.Join(dir, "20-other.conf"), []byte(other), 0o644); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "10-"+c.file)
			if err := os.WriteFile(path, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			drops := func(string) ([]firewall.Place, error) {
				return []firewall.Place{{Backend: firewall.BackendIptablesNFT, Where: "ip filter FORWARD", Why: "ip filter FORWARD has policy drop", Present: true}}, nil
			}
			if c.name == "bridge in an operator's firewalld zone" {
				drops = func(string) ([]firewall.Place, error) {
					return []firewall.Place{{Backend: firewall.BackendFirewalld, Where: "zone internal", Present: true, LeftAlone: true,
						Why: "bridge is in firewalld zone internal, which someone else chose"}}, nil
				}
			}
			r := File(path, Options{ConfDir: dir, Uplinks: uplinks, HostFilters: drops})
			var got []string
			for _, f := range r.Findings {
				got = append(got, string(f.Severity[0]-'a'+'A')+":"+f.Message)
			}
			for _, w := range c.want {
				sev, msg, _ := strings.Cut(w, ":")
				found := false
				for _, g := range got {
					if strings.HasPrefix(g, sev+":") && strings.Contains(g, msg) {
						found = true
					}
				}
				if !found {
					t.Errorf("want %s finding %q, got %q", sev, msg, got)
				}
			}
			if len(c.want) == 0 && len(got) > 0 {
				t.Errorf("want no finding, got %q", got)
			}
		})
	}
}

func TestKnownKeysFollowConfig(t *testing.T) {
	for _, k := range []string{"bridge", "isGateway", "ipMasq", "mtu", "hairpinMode", "logFile", "cniVersion", "name", "type", "ipam", "dns", "capabilities", "runtimeConfig", "args", "prevResult"} {
		found := false
		for _, p := range pluginKeys {
			found = found || p == k
		}
		if !found {
			t.Errorf("known plugin keys lack %q: %v", k, pluginKeys)
		}
	}
}
