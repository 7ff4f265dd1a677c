package config

import (
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

// FuzzLoadNetConf feeds arbitrary stdin and CNI_ARGS to the decoder the
// plugin runs first: it must never panic, and every refusal must carry a
// CNI code a runtime can act on (never the 5 "I/O failure" fallback).
func FuzzLoadNetConf(f *testing.F) {
	f.Add(conf(""), "")
	f.Add(conf(`"mtu": 1400, "runtimeConfig": {"mac": "02:00:00:00:00:09"}`), "IgnoreUnknown=1;MAC=02:00:00:00:00:01")
	f.Add(conf(`"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]}`), "IP=10.1.0.9")
	f.Add([]byte(`{"cniVersion": "0.2.0", "name": "mybridge", "type": "pier", "bridge": "cni_bridge0", "isGateway": true, "ipMasq": true, "ipam": {"type": "pier-ipam", "subnet": "10.15.20.0/24", "routes": [{"dst": "0.0.0.0/0"}]}}`), "")
	f.Add([]byte(`{`), "MAC")
	f.Add(conf(`"macspoofchk": true, "ingressRate": 8000, "ingressBurst": 800, "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "udp", "hostIP": "::"}], "bandwidth": {"egressRate": 1}}`), "")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		n, err := LoadNetConf(stdin, args)
		if err != nil {
			if code := cnierr.CodeOf(err); code == cnierr.IOFailure {
				t.Fatalf("refusal without a CNI code: %v", err)
			}
			return
		}
		if n.Name == "" || n.Bridge == "" || n.IPAM.Type == "" {
			t.Fatalf("accepted a config without name, bridge or ipam type: %+v", n)
		}
		if _, err := LoadIPAM(stdin, args); err != nil && cnierr.CodeOf(err) == cnierr.IOFailure {
			t.Fatalf("IPAM refusal without a CNI code: %v", err)
		}
	})
}
