package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// restoreConf is an IPv4 network with masquerade, a default route and the
// given port mappings, whose outside is newClientHost's.
func restoreConf(dataDir, mappings string, extra string) string {
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "restnet", "type": "pier", "bridge": "pier-rest",
  "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true, "macspoofchk": true %s,
  "runtimeConfig": {"portMappings": %s},
  "ipam": {"type": "pier-ipam", "dataDir": %q, "subnet": "10.16.0.0/24"}}`, extra, mappings, dataDir)
}

const restoreMappings = `[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]`

// works checks the web container's masquerade (the client host sees the
// node's address) and host port (the client reaches it), and returns what
// failed.
func works(t *testing.T, client, web *testnet.NS) []string {
	t.Helper()
	var failed []string
	if reply, err := echoFrom(t, web, "tcp/198.51.100.2:7"); err != nil || !strings.HasPrefix(reply, "198.51.100.1:") {
		failed = append(failed, fmt.Sprintf("masquerade: the client saw %q (%v)", reply, err))
	}
	if _, err := echoFrom(t, client, "tcp/198.51.100.1:8080"); err != nil {
		failed = append(failed, "host port: "+err.Error())
	}
	return failed
}

// TestRestoreAfterFlush guards that Pier's nftables state comes back after
// `nft flush ruleset` (what a firewall reload does) without pierd: before,
// the next ADD of the network added only its own elements, and CHECK and
// GC left the existing containers without masquerade, host ports, RA guard
// and MAC check. Now the next ADD, CHECK or GC of the network rebuilds it
// in full from the attachment records. The same after `nft flush table
// inet pier`, which removes the rules but keeps the sets and the bridge's
// marker: the next ADD's batch of element additions succeeded, CHECK found
// the marker and passed, and all three left the table without its rules.
func TestRestoreAfterFlush(t *testing.T) {
	n := newNode(t)
	client := newClientHost(t, n)
	startEcho(t, client, "tcp/:7")
	conf := restoreConf(n.dataDir, restoreMappings, "")
	web := n.container("web")
	out := n.mustAdd(web, conf)
	startEcho(t, web.ns, "tcp/:80")
	if f := works(t, client, web.ns); len(f) > 0 {
		t.Fatalf("before any flush: %v", f)
	}
	plain := restoreConf(n.dataDir, `[]`, "")
	for i, flush := range []string{"ruleset", "table inet pier"} {
		other := fmt.Sprintf("other%d", i)
		for _, step := range []struct {
			name string
			run  func()
		}{
			{"the next ADD", func() { n.mustAdd(n.container(other), plain) }},
			{"CHECK", func() {
				if r := n.call("CHECK", web, withPrevResult(conf, strings.TrimSpace(out))); r.ExitCode != 0 {
					t.Errorf("CHECK after a flush: exit %d: %s", r.ExitCode, r.Stdout)
				}
			}},
			{"GC", func() {
				if r := n.call("GC", attachment{}, withValidAttachments(plain, web, attachment{id: other, ifName: "eth0"})); r.ExitCode != 0 {
					t.Errorf("GC after a flush: exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
				}
			}},
		} {
			n.sb.Node.MustRun(t, append([]string{"nft", "flush"}, strings.Fields(flush)...)...)
			if f := works(t, client, web.ns); len(f) != 2 {
				t.Fatalf("nft flush %s left something working: %v", flush, f)
			}
			step.run()
			if f := works(t, client, web.ns); len(f) > 0 {
				t.Errorf("after nft flush %s and %s: %v", flush, step.name, f)
			}
			rs := n.sb.Node.MustRun(t, "nft", "list", "ruleset")
			for _, want := range []string{"nd-router-advert", "macspoof-allowed", `"restnet/web/eth0"`, "ip daddr 127.0.0.0/8 drop"} {
				if !strings.Contains(rs, want) {
					t.Errorf("after nft flush %s and %s, the ruleset lacks %q", flush, step.name, want)
				}
			}
		}
	}
}

// TestLocalnetAfterFlush guards the node's 127.0.0.1 against containers
// (CVE-2020-8558): a host port leaves route_localnet=1 on the bridge for
// good, and the rule dropping 127.0.0.0/8 from outside used to come back
// only with an ADD that maps ports. After a flush, an ADD without port
// mappings left a listener on the node's 127.0.0.1 open to any container
// that routes 127.0.0.1 to its gateway.
func TestLocalnetAfterFlush(t *testing.T) {
	n := newNode(t)
	n.mustAdd(n.container("web"), restoreConf(n.dataDir, restoreMappings, ""))
	startEcho(t, n.sb.Node, "tcp/127.0.0.1:9999")
	plain := restoreConf(n.dataDir, `[]`, "")
	attacker := n.container("attacker")
	n.mustAdd(attacker, plain)
	ip := strings.Fields(attacker.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth0"))[3]
	ip = strings.Split(ip, "/")[0]
	// The attacker sends to 127.0.0.1 through its gateway: its own
	// loopback address goes (with its routes, and so the reply from
	// 127.0.0.1 is no martian), and route_localnet lets eth0 carry 127/8.
	attacker.ns.MustRun(t, "ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
	attacker.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
	attacker.ns.MustRun(t, "ip", "route", "add", "127.0.0.1/32", "via", "10.16.0.1", "dev", "eth0", "src", ip)
	if reply, err := echoFrom(t, attacker.ns, "tcp/127.0.0.1:9999"); err == nil {
		t.Fatalf("before the flush, a container reached the node's 127.0.0.1: %q", reply)
	}
	n.sb.Node.MustRun(t, "nft", "flush", "ruleset")
	n.mustAdd(n.container("late"), plain)
	if reply, err := echoFrom(t, attacker.ns, "tcp/127.0.0.1:9999"); err == nil {
		t.Errorf("after a flush and an ADD without ports, a container reached the node's 127.0.0.1: %q", reply)
	}
}

// TestPierdRestores: with pierd running, what a flush or a host firewall
// reload removes comes back without any CNI call — masquerade, host ports
// and the host filter's accepts of a daemon-mode network (its records
// beside pierd's socket). The wait is polled; its length is not asserted.
func TestPierdRestores(t *testing.T) {
	n := newNode(t)
	client := newClientHost(t, n)
	startEcho(t, client, "tcp/:7")
	node := n.sb.Node
	node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
	p := startPierd(t, node.Path)
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "restd", "type": "pier", "bridge": "pier-restd",
  "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "macspoofchk": true,
  "runtimeConfig": {"portMappings": %s},
  "ipam": {"type": "pier-ipam", "daemonSocket": %q, "subnet": "10.17.0.0/24"}}`, restoreMappings, p.socket)
	web := n.container("web")
	n.mustAdd(web, conf)
	startEcho(t, web.ns, "tcp/:80")
	if f := works(t, client, web.ns); len(f) > 0 {
		t.Fatalf("before any flush: %v", f)
	}
	for _, reload := range [][]string{
		{"nft", "flush", "ruleset"},                            // Pier's tables and the host's
		{"nft", "flush", "chain", "inet", "filter", "forward"}, // only the host's accepts
	} {
		if reload[1] == "flush" && reload[2] == "ruleset" {
			node.MustRun(t, reload...)
			node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
		} else {
			node.MustRun(t, reload...)
		}
		err := retryUntil(30*time.Second, func() error {
			if f := works(t, client, web.ns); len(f) > 0 {
				return fmt.Errorf("%v", f)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("after %s, pierd did not restore: %v\n%s", strings.Join(reload, " "), err, p.stderr)
		}
	}
	n.mustDel(web, conf)
	if rs := node.MustRun(t, "nft", "list", "table", "inet", "filter"); strings.Contains(rs, "pier") {
		t.Errorf("DEL of the last container left host accepts:\n%s", rs)
	}
}
