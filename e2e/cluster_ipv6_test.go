package e2e

// Cluster mode, dual stack: IPv6 blocks are routed via the nodes' IPv6
// underlay addresses (pierd --node-ip6).

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const clusterCIDR6 = "fd00:244::/56"

func clusterConfDual(socket string) string {
	return fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "clnet", "type": "pier",
  "bridge": "pier-c0", "isGateway": true, "ipMasq": true, "mtu": 1500,
  "ipam": { "type": "pier-ipam", "daemonSocket": %q,
            "ranges": [[{"subnet": %q}], [{"subnet": %q}]],
            "routes": [ { "dst": "0.0.0.0/0" }, { "dst": "::/0" } ] } }`, socket, clusterCIDR, clusterCIDR6)
}

// TestClusterDualStack: two nodes, two containers each, every container
// pings every other over IPv4 and IPv6; IPv6 blocks go via --node-ip6.
func TestClusterDualStack(t *testing.T) {
	c := newClusterWith(t, 2, "host-gw", false, clusterCIDR+","+clusterCIDR6)
	cli := c.etcdClient()
	var v4, v6 []clusterContainer
	for _, n := range c.nodes {
		for j := range 2 {
			ct := n.add(fmt.Sprintf("%s-d%d", n.name, j), clusterConfDual(n.socket))
			v4 = append(v4, ct)
			ct6 := ct
			ct6.ip = netip.Addr{}
			for _, l := range clusterLeases(t, n) {
				if l.owner == "clnet/"+ct.a.id && l.addr.Is6() {
					ct6.ip = l.addr
				}
			}
			if !netip.MustParsePrefix(clusterCIDR6).Contains(ct6.ip) {
				t.Fatalf("%s has no IPv6 address in %s (%v)", ct.a.id, clusterCIDR6, ct6.ip)
			}
			v6 = append(v6, ct6)
		}
	}
	// Every IPv6 block names its node's IPv6 address as next hop.
	for p, b := range etcdBlocks(t, cli) {
		if !p.Addr().Is4() && !b.NodeIP.Is6() {
			t.Fatalf("IPv6 block %s has next hop %s", p, b.NodeIP)
		}
	}
	waitRoutesConverge(t, c, cli, 10*time.Second)
	for _, n := range c.nodes {
		out := n.sb.Node.MustRun(t, "ip", "-6", "route", "show", "proto", "80")
		if !strings.Contains(out, "via fd00:192::") {
			t.Fatalf("%s has no IPv6 route via a node:\n%s", n.name, out)
		}
	}
	pingAll(t, v4)
	pingAll(t, v6)
}
