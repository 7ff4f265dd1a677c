package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// TestMACPrecedence: the container MAC comes from runtimeConfig.mac, else
// args.cni.mac, else CNI_ARGS MAC=, as with the reference bridge plugin.
func TestMACPrecedence(t *testing.T) {
	n := newNode(t)
	base := classicConf("1.0.0", n.dataDir)
	withArgs := strings.Replace(base, `"type": "pier",`, `"type": "pier", "args": {"cni": {"mac": "02:00:00:00:00:02"}},`, 1)
	withBoth := strings.Replace(withArgs, `"type": "pier",`, `"type": "pier", "runtimeConfig": {"mac": "02:00:00:00:00:03"},`, 1)
	cases := []struct {
		name, conf, want string
	}{
		{"CNI_ARGS", base, "02:00:00:00:00:01"},
		{"args.cni over CNI_ARGS", withArgs, "02:00:00:00:00:02"},
		{"runtimeConfig over both", withBoth, "02:00:00:00:00:03"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := n.container("mac-" + string(rune('a'+i)))
			out := n.mustAdd(c, tc.conf, "CNI_ARGS=IgnoreUnknown=1;MAC=02:00:00:00:00:01")
			link := ipJSON[[]ipLink](t, c.ns, "link", "show", "dev", "eth0")[0]
			if link.Address != tc.want {
				t.Fatalf("eth0 MAC %s, want %s", link.Address, tc.want)
			}
			var r current.Result
			mustDecode(t, out, &r)
			if r.Interfaces[2].Mac != tc.want {
				t.Fatalf("result MAC %s, want %s", r.Interfaces[2].Mac, tc.want)
			}
			n.mustDel(c, tc.conf)
		})
	}
}

// TestMTUPromiscAndLogFile: mtu reaches both veth ends, promiscMode the
// bridge, and logFile gets the plugin's log while stdout holds only the
// result.
func TestMTUPromiscAndLogFile(t *testing.T) {
	n := newNode(t)
	logFile := n.dataDir + "/pier.log"
	conf := strings.Replace(strings.Replace(classicConf("1.0.0", n.dataDir), `"hairpinMode": true`, `"hairpinMode": false`, 1), `"type": "pier",`,
		`"type": "pier", "mtu": 1400, "promiscMode": true, "logFile": "`+logFile+`", "logLevel": "debug",`, 1)
	c := n.container("mtu-1")
	out := n.mustAdd(c, conf)
	var r current.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("stdout is not only the result: %v\n%s", err, out)
	}
	if mtu := ipJSON[[]ipLink](t, c.ns, "link", "show", "dev", "eth0")[0].MTU; mtu != 1400 {
		t.Errorf("container eth0 MTU %d, want 1400", mtu)
	}
	if ports := bridgePorts(t, n.sb.Node, "cni_bridge0"); len(ports) != 1 || ports[0].MTU != 1400 {
		t.Errorf("host veth: %+v, want MTU 1400", ports)
	}
	if br := ipJSON[[]ipLink](t, n.sb.Node, "link", "show", "dev", "cni_bridge0")[0]; !strings.Contains(strings.Join(br.Flags, ","), "PROMISC") {
		t.Errorf("bridge flags %v lack PROMISC", br.Flags)
	}
	n.mustDel(c, conf)
	logged, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatalf("log file: %v", err)
	}
	for _, want := range []string{"cmd=ADD", "cmd=DEL", "container=mtu-1"} {
		if !strings.Contains(string(logged), want) {
			t.Errorf("log lacks %q:\n%s", want, logged)
		}
	}
}

// TestChainedAfterAnotherPlugin: with a prevResult in the config (pier runs
// after another plugin in a conflist), the earlier plugin's interfaces and
// addresses are kept and pier's are appended with correct indexes.
func TestChainedAfterAnotherPlugin(t *testing.T) {
	n := newNode(t)
	prev := `{"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": "/x"}], "ips": [{"address": "127.0.0.1/8", "interface": 0}]}`
	conf := withPrevResult(classicConf("1.0.0", n.dataDir), prev)
	c := n.container("chain-1")
	var r current.Result
	mustDecode(t, n.mustAdd(c, conf), &r)
	if len(r.Interfaces) != 4 || r.Interfaces[0].Name != "lo" || r.Interfaces[3].Name != "eth0" {
		t.Fatalf("interfaces: %+v", r.Interfaces)
	}
	if len(r.IPs) != 2 || *r.IPs[0].Interface != 0 || *r.IPs[1].Interface != 3 || r.IPs[1].Address.String() != "10.15.20.2/24" {
		t.Fatalf("ips: %+v %+v", r.IPs[0], r.IPs[1])
	}
	n.mustDel(c, conf)
}
