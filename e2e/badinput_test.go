package e2e

import (
	"strings"
	"testing"
)

// TestBadInput feeds the plugin input a runtime or a person might get wrong
// and checks the CNI error code, that the message is there, and that the
// node is untouched (no veth, no reservation).
func TestBadInput(t *testing.T) {
	n := newNode(t)
	good := classicConf("1.0.0", n.dataDir)
	ctr := n.container("bad-1")
	base := map[string]string{
		"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad-1", "CNI_NETNS": ctr.ns.Path,
		"CNI_IFNAME": "eth0", "CNI_PATH": n.cniPath,
	}
	cases := []struct {
		name string
		env  map[string]string // overrides; "" deletes the variable
		conf string
		code uint
	}{
		{"missing CNI_CONTAINERID", map[string]string{"CNI_CONTAINERID": ""}, good, 4},
		{"missing CNI_NETNS", map[string]string{"CNI_NETNS": ""}, good, 4},
		{"missing CNI_IFNAME", map[string]string{"CNI_IFNAME": ""}, good, 4},
		{"missing CNI_PATH", map[string]string{"CNI_PATH": ""}, good, 4},
		{"container id with a slash", map[string]string{"CNI_CONTAINERID": "../etc"}, good, 4},
		{"netns that does not exist", map[string]string{"CNI_NETNS": "/var/run/netns/pt-none-x"}, good, 4},
		{"netns that is a regular file", map[string]string{"CNI_NETNS": "/etc/hostname"}, good, 4},
		{"netns that is the node's own", map[string]string{"CNI_NETNS": n.sb.Node.Path}, good, 4},
		{"interface name of 16 bytes", map[string]string{"CNI_IFNAME": "eth0123456789012"}, good, 4},
		{"interface name with a colon", map[string]string{"CNI_IFNAME": "eth:0"}, good, 4},
		{"undecodable config", nil, `{"cniVersion": "1.0.0", "name": "mybridge", "type": "pier", `, 6},
		{"unsupported cniVersion", nil, strings.Replace(good, `"1.0.0"`, `"9.9.9"`, 1), 1},
		{"invalid subnet", nil, strings.Replace(good, "10.15.20.0/24", "10.15.20.0/33", 1), 7},
		{"range outside its subnet", nil, strings.Replace(good, `"subnet": "10.15.20.0/24"`, `"subnet": "10.15.20.0/24", "rangeStart": "10.15.21.5"`, 1), 7},
		{"gateway outside its subnet", nil, strings.Replace(good, `"subnet": "10.15.20.0/24"`, `"subnet": "10.15.20.0/24", "gateway": "10.16.0.1"`, 1), 7},
		{"ipam type with a path", nil, strings.Replace(good, `"type": "pier-ipam"`, `"type": "../../bin/sh"`, 1), 7},
		{"no ipam section", nil, `{"cniVersion": "1.0.0", "name": "mybridge", "type": "pier"}`, 7},
		{"mtu out of range", nil, strings.Replace(good, `"type": "pier",`, `"type": "pier", "mtu": 20,`, 1), 7},
		{"bridge name too long", nil, strings.Replace(good, "cni_bridge0", "a-bridge-name-too-long", 1), 7},
		{"vlan not supported", nil, strings.Replace(good, `"type": "pier",`, `"type": "pier", "vlan": 100,`, 1), 2},
		{"malformed MAC in CNI_ARGS", map[string]string{"CNI_ARGS": "MAC=zz:zz"}, good, 7},
		{"malformed IP in CNI_ARGS", map[string]string{"CNI_ARGS": "IP=10.15.20.300"}, good, 7},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			for k, v := range base {
				if o, ok := tc.env[k]; ok {
					v = o
				}
				if v != "" {
					env = append(env, k+"="+v)
				}
			}
			if o, ok := tc.env["CNI_ARGS"]; ok {
				env = append(env, "CNI_ARGS="+o)
			}
			r := n.sb.Exec(n.binDir+"/pier", env, []byte(tc.conf))
			if msg := cniError(t, r, tc.code); strings.TrimSpace(msg) == "" {
				t.Errorf("empty error message")
			}
			if links := ipJSON[[]ipLink](t, n.sb.Node, "link", "show", "type", "veth"); len(links) != 0 {
				t.Errorf("veth left in the node: %+v", links)
			}
			if res := reservations(t, good); len(res) != 0 {
				t.Errorf("reservation left: %+v", res)
			}
		})
	}
}
