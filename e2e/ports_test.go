package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// portsConf is a dual-stack network whose containers get the given
// portMappings capability (a JSON list). hairpinMode, as with the
// reference: with br_netfilter on (the kernel's default, and Kubernetes'
// requirement), a connection DNATed back to the bridge is bridged, not
// routed, so a container reaching its own host port gets its packet back
// through its own bridge port.
func portsConf(dataDir, mappings string) string {
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "portnet", "type": "pier", "bridge": "pier-ports",
  "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "hairpinMode": true,
  "runtimeConfig": {"portMappings": %s},
  "ipam": {"type": "pier-ipam", "dataDir": %q,
           "ranges": [[{"subnet": "10.15.20.0/24"}], [{"subnet": "fd00:15:20::/64"}]]}}`, mappings, dataDir)
}

const webMappings = `[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
  {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
  {"hostPort": 8081, "containerPort": 81, "protocol": "tcp", "hostIP": "198.51.100.1"},
  {"hostPort": 9090, "containerPort": 90, "protocol": "sctp"}]`

// TestPortMappings: a TCP and a UDP echo server in a container, reached
// through the node's host ports from a client host, from the node itself
// (its address and 127.0.0.1), from the container itself (hairpin) and from
// a neighbour on the bridge, over IPv4 and IPv6; hostIP restricts; a second
// container asking for a taken port is refused with code 104 and leaves
// nothing behind; CHECK verifies, DEL and GC remove.
func TestPortMappings(t *testing.T) {
	n := newNode(t)
	client := newClientHost(t, n)
	conf := portsConf(n.dataDir, webMappings)
	web, neighbour := n.container("web"), n.container("neighbour")
	out := n.mustAdd(web, conf)
	n.mustAdd(neighbour, portsConf(n.dataDir, `[]`))
	startEcho(t, web.ns, "tcp/:80,udp/:53,tcp/:81")

	// Who connects, to where, and which source the container sees: the
	// client's own address survives; hairpin and localhost clients are
	// masqueraded to the bridge's address so the reply comes back through
	// the node. Twice: with br_netfilter passing bridged traffic through
	// the IP hooks (the default) and without, where hairpin is routed.
	for _, brnf := range []string{"1", "0"} {
		n.sb.Node.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables="+brnf, "net.bridge.bridge-nf-call-ip6tables="+brnf)
		checkPortPaths(t, n, client, web.ns, neighbour.ns, "bridge-nf-call-iptables="+brnf)
	}
	// SCTP: the kernel here has no SCTP sockets to test with; the mapping
	// is there, for both families.
	ruleset := n.sb.Node.MustRun(t, "nft", "list", "table", "inet", "pier")
	for _, want := range []string{"sctp . 9090 comment \"portnet/web/eth0\" : 10.15.20.2 . 90", "sctp . 9090 comment \"portnet/web/eth0\" : fd00:15:20::2 . 90"} {
		if !strings.Contains(ruleset, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, ruleset)
		}
	}
	if r := n.call("CHECK", web, withPrevResult(conf, strings.TrimSpace(out))); r.ExitCode != 0 {
		t.Errorf("CHECK: exit %d: %s", r.ExitCode, r.Stdout)
	}

	// The same port for another container: refused, rolled back.
	thief := n.container("thief")
	msg := cniError(t, n.call("ADD", thief, portsConf(n.dataDir, `[{"hostPort": 8080, "containerPort": 8000, "protocol": "tcp"}]`)), 104)
	if !strings.Contains(msg, "tcp/8080") || !strings.Contains(msg, "portnet/web/eth0") {
		t.Errorf("conflict message %q names neither the port nor its holder", msg)
	}
	assertNoTrace(t, n, conf, "thief")

	// DEL removes the mappings; the port is free again.
	n.mustDel(web, conf)
	if reply, err := echoFrom(t, client, "tcp/198.51.100.1:8080"); err == nil {
		t.Errorf("host port still answers after DEL: %q", reply)
	}
	assertNoTrace(t, n, conf, "web")
	n.mustAdd(thief, portsConf(n.dataDir, `[{"hostPort": 8080, "containerPort": 8000, "protocol": "tcp"}]`))

	// GC with no valid attachment reclaims the thief's mapping.
	// (GC's config has no portMappings: it reclaims by owner.)
	if r := n.call("GC", attachment{}, withValidAttachments(portsConf(n.dataDir, `[]`), neighbour)); r.ExitCode != 0 {
		t.Fatalf("GC: exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	assertNoTrace(t, n, conf, "thief")

	// A UDP client that sent to a port before it was mapped keeps its
	// conntrack entry (no DNAT) as long as it sends: ADD forgets it.
	if reply, err := echoUDPFrom(t, client, "udp/198.51.100.1:5354", "1s"); err == nil {
		t.Fatalf("unmapped udp/5354 answered %q", reply)
	}
	late := n.container("late")
	lateConf := portsConf(n.dataDir, `[{"hostPort": 5354, "containerPort": 53, "protocol": "udp"}]`)
	n.mustAdd(late, lateConf)
	startEcho(t, late.ns, "udp/:53")
	if _, err := echoUDPFrom(t, client, "udp/198.51.100.1:5354", "3s"); err != nil {
		t.Errorf("udp/5354 mapped after the client's first datagram: %v", err)
	}
	n.mustDel(late, lateConf)
	n.mustDel(neighbour, portsConf(n.dataDir, `[]`))
}

// echoUDPFrom sends one datagram from a fixed source port, so that two
// calls are one conntrack flow.
func echoUDPFrom(t *testing.T, ns *testnet.NS, to, timeout string) (string, error) {
	t.Helper()
	out, err := ns.Run(echoBinary(t), "-dial", to, "-from", ":40000", "-timeout", timeout)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
	}
	return strings.TrimSpace(out), nil
}

// checkPortPaths connects to the web container's host ports from every
// kind of client and checks the source address the server saw.
func checkPortPaths(t *testing.T, n *node, client, web, neighbour *testnet.NS, mode string) {
	t.Helper()
	for _, tc := range []struct {
		name    string
		from    *testnet.NS
		to      string
		source  string // prefix of the address the server saw
		refused bool
	}{
		{"client host, IPv4", client, "tcp/198.51.100.1:8080", "198.51.100.2:", false},
		{"client host, IPv6", client, "tcp/[2001:db8:100::1]:8080", "[2001:db8:100::2]:", false},
		{"client host, UDP", client, "udp/198.51.100.1:5353", "198.51.100.2:", false},
		{"client host, hostIP port", client, "tcp/198.51.100.1:8081", "198.51.100.2:", false},
		{"node to its own address", n.sb.Node, "tcp/198.51.100.1:8080", "198.51.100.1:", false},
		{"node to localhost", n.sb.Node, "tcp/127.0.0.1:8080", "10.15.20.1:", false},
		{"node, IPv6", n.sb.Node, "tcp/[2001:db8:100::1]:8080", "[2001:db8:100::1]:", false},
		{"container to its own host port", web, "tcp/198.51.100.1:8080", "10.15.20.1:", false},
		{"container to its own host port via the gateway", web, "tcp/10.15.20.1:8080", "10.15.20.1:", false},
		{"container to its own host port, IPv6", web, "tcp/[2001:db8:100::1]:8080", "[fd00:15:20::1]:", false},
		{"neighbour on the bridge", neighbour, "tcp/198.51.100.1:8080", "10.15.20.1:", false},
		{"neighbour, UDP", neighbour, "udp/10.15.20.1:5353", "10.15.20.1:", false},
		// hostIP 198.51.100.1: the gateway address does not map 8081.
		{"hostIP restricts", neighbour, "tcp/10.15.20.1:8081", "", true},
	} {
		reply, err := echoFrom(t, tc.from, tc.to)
		switch {
		case tc.refused && err == nil:
			t.Errorf("%s, %s: %s answered %q, want no mapping", mode, tc.name, tc.to, reply)
		case !tc.refused && err != nil:
			t.Errorf("%s, %s: %s: %v", mode, tc.name, tc.to, err)
		case !tc.refused && !strings.HasPrefix(reply, tc.source):
			t.Errorf("%s, %s: the server saw %q, want a client at %s…", mode, tc.name, reply, tc.source)
		}
	}
}

// assertNoTrace checks that nothing of the attachment id is left in
// nftables, the node's links or the IPAM store.
func assertNoTrace(t *testing.T, n *node, conf, id string) {
	t.Helper()
	for _, table := range []string{"inet", "bridge"} {
		if out, err := n.sb.Node.Run("nft", "list", "table", table, "pier"); err == nil && strings.Contains(out, "/"+id+"/") {
			t.Errorf("table %s pier still has elements of %s:\n%s", table, id, out)
		}
	}
	if out := n.sb.Node.MustRun(t, "ip", "-d", "link"); strings.Contains(out, ":"+id+":") {
		t.Errorf("links of %s left:\n%s", id, out)
	}
	for _, r := range reservations(t, conf) {
		if r.Owner.ContainerID == id {
			t.Errorf("reservation of %s left: %+v", id, r)
		}
	}
}

// newClientHost joins a "client host" namespace to the node by a veth:
// 198.51.100.2/24 and 2001:db8:100::2/64 on its side, .1 and ::1 on the
// node's (uplink0), default routes to the node. It knows no route to the
// containers' subnets.
func newClientHost(t *testing.T, n *node) *testnet.NS {
	t.Helper()
	c := testnet.NewNS(t, "pt-client-")
	node := n.sb.Node
	node.MustRun(t, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", c.Name)
	node.MustRun(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "uplink0")
	node.MustRun(t, "ip", "addr", "add", "2001:db8:100::1/64", "dev", "uplink0", "nodad")
	node.MustRun(t, "ip", "link", "set", "uplink0", "up")
	c.MustRun(t, "ip", "addr", "add", "198.51.100.2/24", "dev", "eth0")
	c.MustRun(t, "ip", "addr", "add", "2001:db8:100::2/64", "dev", "eth0", "nodad")
	c.MustRun(t, "ip", "link", "set", "eth0", "up")
	c.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
	c.MustRun(t, "ip", "-6", "route", "add", "default", "via", "2001:db8:100::1")
	return c
}

var (
	echoOnce sync.Once
	echoBin  string
	echoErr  error
)

// echoBinary builds testdata/echo once per test process, next to the
// plugin binaries (and with their lifetime).
func echoBinary(t *testing.T) string {
	t.Helper()
	dir := testnet.Binaries(t)
	echoOnce.Do(func() {
		echoBin = filepath.Join(dir, "echo")
		cmd := exec.Command("go", "build", "-o", echoBin, "./testdata/echo")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			echoErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if echoErr != nil {
		t.Fatalf("building the echo helper: %v", echoErr)
	}
	return echoBin
}

// startEcho runs the echo server in ns until the test ends.
func startEcho(t *testing.T, ns *testnet.NS, listen string) {
	t.Helper()
	cmd := exec.Command(echoBinary(t), "-listen", listen)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := testnet.StartIn(ns.Path, cmd); err != nil {
		t.Fatalf("start echo server in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // our own child; it has nothing to flush
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("echo server in %s: %v", ns.Name, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("echo server in %s did not start", ns.Name)
	}
}

// echoFrom sends one line from ns to proto/addr and returns the reply.
func echoFrom(t *testing.T, ns *testnet.NS, to string) (string, error) {
	t.Helper()
	out, err := ns.Run(echoBinary(t), "-dial", to, "-timeout", "3s")
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
	}
	return strings.TrimSpace(out), nil
}

// TestPortMappingFamilies: on an IPv4-only network, a mapping to an IPv6
// host address cannot be honoured (code 7, rolled back), while one to ::
// asks for nothing and is skipped, as the reference skips it.
func TestPortMappingFamilies(t *testing.T) {
	n := newNode(t)
	conf := func(mappings string) string {
		return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "v4only", "type": "pier", "bridge": "pier-v4",
  "isGateway": true, "runtimeConfig": {"portMappings": %s},
  "ipam": {"type": "pier-ipam", "subnet": "10.55.0.0/24", "dataDir": %q}}`, mappings, n.dataDir)
	}
	c := n.container("v4c")
	bad := conf(`[{"hostPort": 8080, "containerPort": 80, "hostIP": "2001:db8::1"}]`)
	if msg := cniError(t, n.call("ADD", c, bad), 7); !strings.Contains(msg, "2001:db8::1") {
		t.Errorf("message %q does not name the host address", msg)
	}
	assertNoTrace(t, n, bad, "v4c")
	ok := conf(`[{"hostPort": 8080, "containerPort": 80, "hostIP": "::"}, {"hostPort": 8081, "containerPort": 81}]`)
	n.mustAdd(c, ok)
	rs := n.sb.Node.MustRun(t, "nft", "list", "table", "inet", "pier")
	if strings.Contains(rs, "8080") || !strings.Contains(rs, `tcp . 8081 comment "v4only/v4c/eth0" : 10.55.0.`) {
		t.Errorf("want only tcp/8081 mapped:\n%s", rs)
	}
	n.mustDel(c, ok)
}
