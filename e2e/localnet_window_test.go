package e2e

import (
	"os"
	"path/filepath"
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

// TestLocalnetGuard: while a host port leads behind the bridge,
// route_localnet stays on, and the guard on the bridge's ingress keeps
// containers from the node's 127.0.0.1 through a flush of the whole
// ruleset, while the node itself reaches the host port at 127.0.0.1 (with
// br_netfilter, once Pier's table is back after the flush: the guard lets
// the replies through by a mark that table sets). A guard removed by hand
// comes back with CHECK. When the bridge's last host port goes, the next
// GC turns the sysctl off and removes the guard (a DEL leaves both: the
// sysctl is safe behind its guard, and finding whether a host port is
// left costs more than a DEL should); the next host port brings both
// back.
func TestLocalnetGuard(t *testing.T) {
	n := newNode(t)
	node := n.sb.Node
	conf := restoreConf(n.dataDir, restoreMappings, "")
	web := n.container("web")
	out := n.mustAdd(web, conf)
	startEcho(t, web.ns, "tcp/:80")
	startEcho(t, node, "tcp/127.0.0.1:9999")
	attacker := n.container("attacker")
	n.mustAdd(attacker, restoreConf(n.dataDir, `[]`, ""))
	routeLoopbackToGateway(t, attacker)
	sysctl := func() string {
		return strings.TrimSpace(node.MustRun(t, "sysctl", "-n", "net.ipv4.conf.pier-rest.route_localnet"))
	}
	guarded := func() bool {
		return strings.Contains(node.MustRun(t, "tc", "filter", "show", "dev", "pier-rest", "ingress"), "pier-localnet")
	}
	expect := func(when string, nodeReaches bool) {
		t.Helper()
		if reply, err := echoFrom(t, attacker.ns, "tcp/127.0.0.1:9999"); err == nil {
			t.Errorf("%s: a container reached the node's 127.0.0.1 (route_localnet %s): %q", when, sysctl(), reply)
		}
		if _, err := echoFrom(t, node, "tcp/127.0.0.1:8080"); nodeReaches && err != nil {
			t.Errorf("%s: the node does not reach its host port at 127.0.0.1: %v", when, err)
		}
	}
	if sysctl() != "1" || !guarded() {
		t.Fatalf("with a host port: route_localnet %s, guard %v", sysctl(), guarded())
	}
	expect("with a host port", true)
	node.MustRun(t, "nft", "flush", "ruleset")
	expect("after nft flush ruleset", false)
	late := n.container("late")
	n.mustAdd(late, restoreConf(n.dataDir, `[]`, ""))
	expect("after the flush and the next ADD", true)

	confDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "10-restnet.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	inspect := func() string {
		return ctlIn(t, node.Name, n.binDir, "inspect", "--network", "restnet", "--conf-dir", confDir, "--cache-dir", t.TempDir()).stdout
	}
	if text := inspect(); !strings.Contains(text, "route_localnet on, tc filter pier-localnet") {
		t.Errorf("inspect does not show the guard:\n%s", text)
	}
	node.MustRun(t, "tc", "filter", "del", "dev", "pier-rest", "ingress", "pref", "16")
	if text := inspect(); !strings.Contains(text, "route_localnet on without its guard") {
		t.Errorf("inspect does not report the missing guard:\n%s", text)
	}
	if r := n.call("CHECK", web, withPrevResult(conf, strings.TrimSpace(out))); r.ExitCode != 0 || !guarded() {
		t.Errorf("CHECK of a bridge whose guard was removed: exit %d %s, guard %v", r.ExitCode, r.Stdout, guarded())
	}

	n.mustDel(web, conf)
	if sysctl() != "1" || !guarded() {
		t.Errorf("after the last host port's DEL: route_localnet %s, guard %v; want both", sysctl(), guarded())
	}
	expect("after the last host port's DEL", false)
	if r := n.call("GC", attachment{}, withValidAttachments(conf, attacker, late)); r.ExitCode != 0 {
		t.Fatalf("GC: exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	if sysctl() != "0" || guarded() {
		t.Errorf("after a GC with no host port left: route_localnet %s, guard %v; want both gone", sysctl(), guarded())
	}
	web2 := n.container("web2")
	n.mustAdd(web2, conf)
	startEcho(t, web2.ns, "tcp/:80")
	if sysctl() != "1" || !guarded() {
		t.Errorf("after a new host port: route_localnet %s, guard %v", sysctl(), guarded())
	}
	expect("with a new host port", true)
}

// routeLoopbackToGateway makes the container send to 127.0.0.1 through
// its gateway, as an attacker would: its own loopback address goes (with
// its routes, and so the reply from 127.0.0.1 is no martian), and
// route_localnet lets eth0 carry 127/8.
func routeLoopbackToGateway(t *testing.T, a attachment) {
	t.Helper()
	ip := strings.Split(strings.Fields(a.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth0"))[3], "/")[0]
	a.ns.MustRun(t, "ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
	a.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
	a.ns.MustRun(t, "ip", "route", "add", "127.0.0.1/32", "via", "10.16.0.1", "dev", "eth0", "src", ip)
}
