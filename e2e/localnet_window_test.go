package e2e

import (
	"strings"
	"testing"
)

// TestLocalnetRightAfterFlush guards the node's 127.0.0.1 in the moments
// after a flush, before any CNI call (and on a node without pierd, until
// the next ADD, CHECK or GC of the network). A host port leaves
// route_localnet=1 on the bridge for good, even after its container is
// gone, and the only thing keeping containers from the node's loopback
// services (CVE-2020-8558) is a rule in table inet pier, which
// `nft flush ruleset` (a firewall reload) removes. The README's promise —
// a bridge that keeps route_localnet=1 is never without the drop — needs a
// guard a flush cannot take (or no route_localnet on the bridge).
func TestLocalnetRightAfterFlush(t *testing.T) {
	n := newNode(t)
	web := n.container("web")
	n.mustAdd(web, restoreConf(n.dataDir, restoreMappings, ""))
	startEcho(t, n.sb.Node, "tcp/127.0.0.1:9999")
	plain := restoreConf(n.dataDir, `[]`, "")
	attacker := n.container("attacker")
	n.mustAdd(attacker, plain)
	n.mustDel(web, restoreConf(n.dataDir, restoreMappings, "")) // no host port is left on the bridge
	ip := strings.Fields(attacker.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth0"))[3]
	ip = strings.Split(ip, "/")[0]
	attacker.ns.MustRun(t, "ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
	attacker.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
	attacker.ns.MustRun(t, "ip", "route", "add", "127.0.0.1/32", "via", "10.16.0.1", "dev", "eth0", "src", ip)
	if reply, err := echoFrom(t, attacker.ns, "tcp/127.0.0.1:9999"); err == nil {
		t.Fatalf("before the flush, a container reached the node's 127.0.0.1: %q", reply)
	}
	n.sb.Node.MustRun(t, "nft", "flush", "ruleset")
	if reply, err := echoFrom(t, attacker.ns, "tcp/127.0.0.1:9999"); err == nil {
		t.Errorf("after a flush, a container reached the node's 127.0.0.1 (route_localnet on the bridge: %s): %q",
			strings.TrimSpace(n.sb.Node.MustRun(t, "sysctl", "-n", "net.ipv4.conf.pier-rest.route_localnet")), reply)
	}
}
