package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

func TestPortMappings(t *testing.T) {
	n, err := LoadNetConf(conf(`"runtimeConfig": {"portMappings": [
		{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"},
		{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 5353, "containerPort": 53},
		{"hostPort": 8080, "containerPort": 81, "protocol": "tcp", "hostIP": "198.51.100.1"},
		{"hostPort": 9000, "containerPort": 90, "protocol": "sctp", "hostIP": "::"}]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	got := n.RuntimeConfig.PortMappings
	want := []PortMapping{
		{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostPort: 5353, ContainerPort: 53, Protocol: "tcp"},
		{HostPort: 8080, ContainerPort: 81, Protocol: "tcp", HostIP: "198.51.100.1", HostAddr: netip.MustParseAddr("198.51.100.1")},
		{HostPort: 9000, ContainerPort: 90, Protocol: "sctp", HostIP: "::", HostAddr: netip.IPv6Unspecified()},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestPortMappingRefusals(t *testing.T) {
	for _, tc := range []struct {
		mappings string
		code     uint
		words    string
	}{
		{`{"hostPort": 0, "containerPort": 80}`, cnierr.InvalidConfig, "hostPort 0"},
		{`{"hostPort": 65536, "containerPort": 80}`, cnierr.InvalidConfig, "hostPort 65536"},
		{`{"hostPort": 80, "containerPort": -1}`, cnierr.InvalidConfig, "containerPort -1"},
		{`{"hostPort": 80, "containerPort": 80, "protocol": "dccp"}`, cnierr.UnsupportedField, "dccp"},
		{`{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}`, cnierr.InvalidConfig, "hostIP"},
		{`{"hostPort": 80, "containerPort": 80, "hostIP": "fe80::1%eth0"}`, cnierr.InvalidConfig, "hostIP"},
		// The same host port to two container ports is a contradiction,
		// also between a wildcard and a family wildcard.
		{`{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}`, cnierr.InvalidConfig, "mapped twice"},
		{`{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81, "hostIP": "0.0.0.0"}`, cnierr.InvalidConfig, "mapped twice"},
		{`{"hostPort": "80", "containerPort": 80}`, cnierr.DecodingFailure, ""},
	} {
		_, err := LoadNetConf(conf(`"runtimeConfig": {"portMappings": [`+tc.mappings+`]}`), "")
		if err == nil {
			t.Errorf("%s: accepted", tc.mappings)
			continue
		}
		if got := cnierr.CodeOf(err); got != tc.code || !strings.Contains(err.Error(), tc.words) {
			t.Errorf("%s: code %d %q, want %d naming %q", tc.mappings, got, err, tc.code, tc.words)
		}
	}
	// One host port to the same container port on two addresses is fine.
	if _, err := LoadNetConf(conf(`"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "198.51.100.1"}, {"hostPort": 80, "containerPort": 81, "hostIP": "198.51.100.2"}]}`), ""); err != nil {
		t.Errorf("distinct host addresses refused: %v", err)
	}
}

func TestBandwidth(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		want        *Bandwidth
	}{
		{"none", ``, nil},
		{"capability", `"runtimeConfig": {"bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000}}`, &Bandwidth{IngressRate: 1000000, IngressBurst: 100000}},
		{"zero capability", `"runtimeConfig": {"bandwidth": {"ingressRate": 0}}`, nil},
		{"top level", `"egressRate": 8000, "egressBurst": 16000`, &Bandwidth{EgressRate: 8000, EgressBurst: 16000}},
		// As the reference: any top-level key makes the top level win.
		{"top level over capability", `"ingressRate": 8000, "ingressBurst": 800, "runtimeConfig": {"bandwidth": {"egressRate": 1000000, "egressBurst": 1}}`, &Bandwidth{IngressRate: 8000, IngressBurst: 800}},
	} {
		n, err := LoadNetConf(conf(tc.extra), "")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (n.Bandwidth == nil) != (tc.want == nil) || (tc.want != nil && *n.Bandwidth != *tc.want) {
			t.Errorf("%s: bandwidth %+v, want %+v", tc.name, n.Bandwidth, tc.want)
		}
	}
	for _, extra := range []string{
		`"egressRate": 1000`,
		`"runtimeConfig": {"bandwidth": {"egressBurst": 1000}}`,
		`"ingressRate": 7, "ingressBurst": 100`,
		`"ingressRate": 1000, "ingressBurst": 40000000000`,
	} {
		if _, err := LoadNetConf(conf(extra), ""); cnierr.CodeOf(err) != cnierr.InvalidConfig {
			t.Errorf("%s: %v, want code 7", extra, err)
		}
	}
}
