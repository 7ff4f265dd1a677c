package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

const baseConf = `{"cniVersion": "1.0.0", "name": "net1", "type": "pier"`

const baseIPAM = `"ipam": {"type": "pier-ipam", "subnet": "10.1.0.0/24"}`

// conf returns a valid config plus extra keys; an extra "ipam" replaces the
// default one.
func conf(extra string) []byte {
	if !strings.Contains(extra, `"ipam"`) {
		extra = strings.TrimPrefix(extra+", "+baseIPAM, ", ")
	}
	return []byte(baseConf + ", " + extra + "}")
}

func TestLoadNetConfDefaults(t *testing.T) {
	n, err := LoadNetConf(conf(""), "")
	if err != nil {
		t.Fatal(err)
	}
	if n.Bridge != DefaultBridge || n.IsGateway || n.IPMasq || n.MTU != 0 || n.MAC != nil {
		t.Fatalf("defaults: %+v", n)
	}
	// Unknown keys are ignored, as the reference does.
	if _, err := LoadNetConf(conf(`"someRuntimeKey": {"x": 1}`), ""); err != nil {
		t.Fatalf("unknown key refused: %v", err)
	}
}

func TestLoadNetConfRefusals(t *testing.T) {
	cases := []struct {
		name  string
		extra string
		args  string
		code  uint
		words string // the message must name these
	}{
		{"vlan", `"vlan": 100`, "", cnierr.UnsupportedField, "vlan"},
		{"vlanTrunk", `"vlanTrunk": [{"id": 5}]`, "", cnierr.UnsupportedField, "vlanTrunk"},
		{"iptables backend", `"ipMasqBackend": "iptables"`, "", cnierr.UnsupportedField, "iptables"},
		{"firewall backend", `"firewallBackend": "firewalld"`, "", cnierr.UnsupportedField, "firewallBackend"},
		{"ingress policy", `"ingressPolicy": "isolated"`, "", cnierr.UnsupportedField, "ingressPolicy"},
		{"port mapping protocol", `"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}`, "", cnierr.UnsupportedField, "portMappings[0]"},
		{"bandwidth rate without burst", `"runtimeConfig": {"bandwidth": {"ingressRate": 1000}}`, "", cnierr.InvalidConfig, "ingressBurst"},
		{"mtu too small", `"mtu": 10`, "", cnierr.InvalidConfig, "mtu"},
		{"bridge name with slash", `"bridge": "a/b"`, "", cnierr.InvalidConfig, "bridge"},
		{"bad log level", `"logLevel": "loud"`, "", cnierr.InvalidConfig, "logLevel"},
		{"multicast MAC", `"runtimeConfig": {"mac": "01:00:5e:00:00:01"}`, "", cnierr.InvalidConfig, "multicast"},
		{"bad MAC in CNI_ARGS", "", "MAC=nope", cnierr.InvalidConfig, "CNI_ARGS MAC"},
		{"unparseable CNI_ARGS", "", "MAC", cnierr.InvalidEnv, "CNI_ARGS"},
		{"hairpin with promisc", `"hairpinMode": true, "promiscMode": true`, "", cnierr.InvalidConfig, "promiscMode"},
		{"stateDir with pier-ipam", `"stateDir": "/run/x"`, "", cnierr.UnsupportedField, "stateDir"},
		{"relative stateDir", `"stateDir": "state", "ipam": {"type": "host-local"}`, "", cnierr.InvalidConfig, "stateDir"},
		{"undecodable prevResult", `"prevResult": {"cniVersion": "1.0.0", "ips": "nope"}`, "", cnierr.DecodingFailure, "prevResult"},
		{"policy without source check", `"networkPolicy": true, "ipspoofchk": false`, "", cnierr.UnsupportedField, "ipspoofchk"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadNetConf(conf(tc.extra), tc.args)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := cnierr.CodeOf(err); got != tc.code {
				t.Fatalf("code %d, want %d: %v", got, tc.code, err)
			}
			if !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("message %q does not name %q", err, tc.words)
			}
		})
	}
	if _, err := LoadNetConf([]byte(`{"name": `), ""); cnierr.CodeOf(err) != cnierr.DecodingFailure {
		t.Fatalf("undecodable config: %v", err)
	}
	// Empty lists and objects in capabilities ask for nothing: accepted.
	if _, err := LoadNetConf(conf(`"runtimeConfig": {"portMappings": [], "bandwidth": {}}`), ""); err != nil {
		t.Fatalf("empty capabilities refused: %v", err)
	}
}

func TestDefaultGatewayImpliesGateway(t *testing.T) {
	n, err := LoadNetConf(conf(`"isDefaultGateway": true`), "")
	if err != nil {
		t.Fatal(err)
	}
	if !n.IsGateway {
		t.Fatal("isDefaultGateway without isGateway leaves the default route's gateway off the bridge")
	}
}

func TestMACPrecedence(t *testing.T) {
	both := `"args": {"cni": {"mac": "02:00:00:00:00:02"}}, "runtimeConfig": {"mac": "02:00:00:00:00:03"}`
	for _, tc := range []struct{ extra, args, want string }{
		{"", "IgnoreUnknown=1;K8S_POD_NAME=x;MAC=02:00:00:00:00:01", "02:00:00:00:00:01"},
		{`"args": {"cni": {"mac": "02:00:00:00:00:02"}}`, "MAC=02:00:00:00:00:01", "02:00:00:00:00:02"},
		{both, "MAC=02:00:00:00:00:01", "02:00:00:00:00:03"},
	} {
		n, err := LoadNetConf(conf(tc.extra), tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if n.MAC.String() != tc.want {
			t.Errorf("%s / %s: MAC %s, want %s", tc.extra, tc.args, n.MAC, tc.want)
		}
	}
}

// TestFirewallKeys: the host firewall is opened unless firewallBackend is
// "none"; same-bridge only when asked.
func TestFirewallKeys(t *testing.T) {
	for _, tc := range []struct {
		keys           string
		opens, isolate bool
	}{
		{``, true, false},
		{`"firewallBackend": "auto", "ingressPolicy": "open",`, true, false},
		{`"firewallBackend": "none", "ingressPolicy": "same-bridge",`, false, true},
	} {
		n, err := LoadNetConf([]byte(`{"cniVersion": "1.0.0", "name": "n", "type": "pier", `+tc.keys+` "ipam": {"type": "pier-ipam"}}`), "")
		if err != nil {
			t.Fatalf("%s: %v", tc.keys, err)
		}
		if n.OpensHostFirewall() != tc.opens || n.SameBridge() != tc.isolate {
			t.Errorf("%s: opens %v, same-bridge %v", tc.keys, n.OpensHostFirewall(), n.SameBridge())
		}
	}
}

// TestPodFromCNIArgs: kubelet's runtimes pass the pod's namespace and name
// in CNI_ARGS; network policy names the pod's chains after them. The keys
// are known, so CNI_ARGS without IgnoreUnknown is accepted too, by the
// plugin's and by IPAM's parser.
func TestPodFromCNIArgs(t *testing.T) {
	for _, args := range []string{
		"IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc",
		"K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0",
	} {
		n, err := LoadNetConf(conf(`"networkPolicy": true`), args)
		if err != nil {
			t.Fatalf("%s: %v", args, err)
		}
		if !n.NetworkPolicy || n.PodNamespace != "team-a" || n.PodName != "web-0" {
			t.Errorf("%s: networkPolicy %v pod %s/%s", args, n.NetworkPolicy, n.PodNamespace, n.PodName)
		}
		if _, err := LoadIPAM(conf(""), args); err != nil {
			t.Errorf("IPAM refuses %s: %v", args, err)
		}
	}
	n, err := LoadNetConf(conf(""), "")
	if err != nil || n.NetworkPolicy || n.PodName != "" {
		t.Errorf("defaults: %+v %v", n, err)
	}
}

func TestNonMasqueradeCIDRs(t *testing.T) {
	n, err := LoadNetConf(conf(`"ipMasq": true, "nonMasqueradeCIDRs": ["10.244.0.0/16", "fd00:10:244::1/56"]`), "")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(n.NonMasquerade) != "[10.244.0.0/16 fd00:10:244::/56]" {
		t.Fatalf("parsed %v", n.NonMasquerade)
	}
	for _, bad := range []string{`["10.244.0.0"]`, `["0.0.0.0/0"]`, `["::/0"]`, `["fe80::/64%eth0"]`, `"10.0.0.0/8"`} {
		_, err := LoadNetConf(conf(`"nonMasqueradeCIDRs": `+bad), "")
		want := cnierr.InvalidConfig
		if bad[0] == '"' {
			want = cnierr.DecodingFailure // not a list
		}
		if cnierr.CodeOf(err) != want || (want == cnierr.InvalidConfig && !strings.Contains(err.Error(), "nonMasqueradeCIDRs")) {
			t.Errorf("%s: %v (code %d, want %d)", bad, err, cnierr.CodeOf(err), want)
		}
	}
}

// TestStateDir: a delegated IPAM's network keeps Pier's state in
// "stateDir" (cleaned), else in the default data directory.
func TestStateDir(t *testing.T) {
	for _, tc := range []struct{ keys, want string }{
		{``, DefaultDataDir},
		{`"stateDir": "/tmp/x/../pier-state/",`, "/tmp/pier-state"},
	} {
		n, err := LoadNetConf([]byte(`{"cniVersion": "1.0.0", "name": "n", "type": "pier", `+tc.keys+` "ipam": {"type": "host-local"}}`), "")
		if err != nil {
			t.Fatalf("%s: %v", tc.keys, err)
		}
		if got := n.DelegatedStateDir(); got != tc.want {
			t.Errorf("%s: state directory %s, want %s", tc.keys, got, tc.want)
		}
	}
}

// TestSourceCheck: the source address check is off by default, on when
// asked, and always on with networkPolicy.
func TestSourceCheck(t *testing.T) {
	for _, c := range []struct {
		extra string
		want  bool
	}{
		{"", false},
		{`"ipspoofchk": false`, false},
		{`"ipspoofchk": true`, true},
		{`"networkPolicy": true`, true},
		{`"networkPolicy": true, "ipspoofchk": true`, true},
	} {
		n, err := LoadNetConf(conf(c.extra), "")
		if err != nil {
			t.Fatalf("%s: %v", c.extra, err)
		}
		if got := n.SourceCheck(); got != c.want {
			t.Errorf("%s: source check %v, want %v", c.extra, got, c.want)
		}
	}
}
