package e2e

// Cluster mode: requested addresses (CNI_ARGS IP=, the ips capability).

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// addWith runs ADD on n with CNI_ARGS (may be empty).
func (n *clusterNode) addWith(id, cniArgs, conf string) (clusterContainer, string, int) {
	ns := n.sb.Container()
	env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + id, "CNI_NETNS=" + ns.Path,
		"CNI_IFNAME=eth0", "CNI_PATH=" + n.env.bin, "CNI_ARGS=" + cniArgs}
	r := n.sb.Exec(filepath.Join(n.env.bin, "pier"), env, []byte(conf))
	if r.ExitCode != 0 {
		var e struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
			Det  string `json:"details"`
		}
		_ = json.Unmarshal([]byte(r.Stdout), &e)
		return clusterContainer{}, e.Msg + ": " + e.Det + " " + r.Stdout, int(e.Code)
	}
	var res current.Result
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || len(res.IPs) == 0 {
		n.env.t.Fatalf("ADD result: %v\n%s", err, r.Stdout)
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	return clusterContainer{node: n, a: attachment{ns: ns, id: id, ifName: "eth0"}, ip: ip.Unmap()}, "", 0
}

// TestClusterRequestedAddress: a requested address is honoured in a block
// of the node or in a free block the node claims for it; in another node's
// block, held, reserved (gateway) or outside the cluster: error 101.
func TestClusterRequestedAddress(t *testing.T) {
	c := newCluster(t, 2, "host-gw")
	cli := c.etcdClient()
	n1, n2 := c.nodes[0], c.nodes[1]
	conf1, conf2 := clusterConf(n1.socket, 1500), clusterConf(n2.socket, 1500)
	a := n1.add("req-a", conf1)
	b := n2.add("req-b", conf2)
	b1 := netip.PrefixFrom(a.ip, 26).Masked()
	b2 := netip.PrefixFrom(b.ip, 26).Masked()
	if b1 == b2 {
		t.Fatalf("nodes share block %s", b1)
	}
	at := func(p netip.Prefix, off int) netip.Addr {
		x := p.Addr()
		for range off {
			x = x.Next()
		}
		return x
	}

	// In the node's own block.
	own := at(b1, 40)
	ct, msg, code := n1.addWith("req-own", "IP="+own.String(), conf1)
	if code != 0 || ct.ip != own {
		t.Fatalf("requested %s in node1's block: got %s, code %d %s", own, ct.ip, code, msg)
	}
	// In a free block: node1 claims it.
	free := netip.MustParseAddr("10.244.7.9")
	ct2, msg, code := n1.addWith("req-free", "IP="+free.String(), conf1)
	if code != 0 || ct2.ip != free {
		t.Fatalf("requested %s in a free block: got %s, code %d %s", free, ct2.ip, code, msg)
	}
	if blk := etcdBlocks(t, cli)[netip.MustParsePrefix("10.244.7.0/26")]; blk.Node != n1.name {
		t.Fatalf("block 10.244.7.0/26 belongs to %q, want node1", blk.Node)
	}
	// The ips capability (runtimeConfig) works the same.
	capConf := strings.Replace(conf1, `"type": "pier",`, `"type": "pier", "capabilities": {"ips": true}, "runtimeConfig": {"ips": ["10.244.7.20/26"]},`, 1)
	ct3, msg, code := n1.addWith("req-cap", "", capConf)
	if code != 0 || ct3.ip != netip.MustParseAddr("10.244.7.20") {
		t.Fatalf("runtimeConfig.ips 10.244.7.20: got %s, code %d %s", ct3.ip, code, msg)
	}

	// Refused with 101 and a reason.
	for _, tc := range []struct {
		name, ip, want string
	}{
		{"other node's block", at(b2, 30).String(), "belongs to node " + n2.name},
		{"held", own.String(), "held by container req-own"},
		{"gateway", at(b1, 1).String(), "reserved"},
		{"outside the cluster", "10.250.0.5", "outside"},
	} {
		_, msg, code := n1.addWith("req-bad", "IP="+tc.ip, conf1)
		if code != 101 || !strings.Contains(msg, tc.want) {
			t.Errorf("%s (%s): code %d, msg %q; want 101 mentioning %q", tc.name, tc.ip, code, msg, tc.want)
		}
	}
	// A refused request leaves nothing behind.
	for _, l := range clusterLeases(t, n2) {
		if strings.HasSuffix(l.owner, "/req-bad") {
			t.Fatalf("refused request left a lease: %v", l)
		}
	}
	// The claimed block is routed: node2's container reaches it.
	waitRoutesConverge(t, c, cli, 10*time.Second)
	pingAll(t, []clusterContainer{ct2, b, ct})
}
