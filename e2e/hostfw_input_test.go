package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestHostFirewallFirewalldKeepsNodeClosed guards the node's own services
// on a firewalld host. Pier must make the host's filters accept what its
// bridge *forwards*; on iptables and nftables hosts it adds forward
// accepts only, and what a container sends to the node itself stays
// under the host's input policy. With firewalld Pier puts the bridge into
// zone "trusted", whose target ACCEPT applies to input as well: every
// container then reaches every port of the node that firewalld closes
// (here a service on 7777, closed to the outside host by the default zone
// public).
func TestHostFirewallFirewalldKeepsNodeClosed(t *testing.T) {
	e, _ := startFirewalldNode(t)
	n := e.node
	startEcho(t, n.sb.Node, "tcp/:7777")
	if reply, err := echoFrom(t, e.client, "tcp/198.51.100.1:7777"); err == nil {
		t.Fatalf("firewalld lets the outside host reach the node's port 7777 (%q): the test shows nothing", reply)
	}
	s := e.networks("")[0]
	c := e.add(s, false)
	if reply, err := echoFrom(t, c.ns, "tcp/198.51.100.1:7777"); err == nil {
		t.Errorf("a container reached the node's port 7777, which firewalld keeps closed (%q)", reply)
	}
	if reply, err := echoFrom(t, c.ns, "tcp/"+s.gw+":7777"); err == nil {
		t.Errorf("a container reached the node's port 7777 at its gateway %s (%q)", s.gw, reply)
	}
	e.del(s, c)
}

// TestHostFirewallFirewalldKeepsOperatorsZone guards an operator's choice
// of zone for the bridge. Pier's removal leaves a bridge in a zone other
// than trusted alone ("someone else's choice"), but its setup moves a
// bridge the operator had put in a zone (here internal) into trusted
// (changeZoneOfInterface), and the last container's DEL then takes it out
// of trusted, so the operator's zone is lost for good.
func TestHostFirewallFirewalldKeepsOperatorsZone(t *testing.T) {
	e, zone := startFirewalldNode(t)
	s := e.networks("")[0]
	e.sb.Node.MustRun(t, "ip", "link", "add", s.bridge, "type", "bridge")
	if out, err := e.fwcmd("--zone=internal", "--add-interface="+s.bridge); err != nil {
		t.Fatalf("firewall-cmd: %v %s", err, out)
	}
	c := e.add(s, false)
	if z := zone(s.bridge); z != "internal" {
		t.Errorf("after ADD, bridge %s is in zone %q; the operator put it in internal", s.bridge, z)
	}
	e.del(s, c)
	if z := zone(s.bridge); z != "internal" {
		t.Errorf("after DEL of the last container, bridge %s is in zone %q; the operator put it in internal", s.bridge, z)
	}
}

// fwEnv is a host environment (hostEnv) on a node running firewalld.
type fwEnv struct {
	*hostEnv
	fwcmd func(args ...string) (string, error)
}

// startFirewalldNode starts dbus-daemon and firewalld (default zone
// public) in a runtimeHost, as TestHostFirewallFirewalld does, and returns
// the host environment and a function giving an interface's zone.
func startFirewalldNode(t *testing.T) (*fwEnv, func(dev string) string) {
	t.Helper()
	requireRuntimeTools(t, "firewalld", "firewall-cmd", "dbus-daemon", "nsenter")
	rt := newRuntimeHost(t)
	n := &node{t: t, sb: rt.sb, binDir: testnet.Binaries(t), dataDir: t.TempDir()}
	n.cniPath = n.binDir + ":/usr/lib/cni"
	e := newHostEnv(t, n)
	bus := []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(rt.dir, "system_bus_socket")}
	e.env = bus
	rt.startBackground(nil, "dbus.log", "dbus-daemon", "--system", "--nofork", "--nopidfile", "--address", strings.TrimPrefix(bus[0], "DBUS_SYSTEM_BUS_ADDRESS="))
	cfg := filepath.Join(rt.dir, "firewalld")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := retryUntil(30*time.Second, func() error { _, err := os.Stat(filepath.Join(rt.dir, "system_bus_socket")); return err }); err != nil {
		t.Fatalf("dbus-daemon did not start: %v", err)
	}
	rt.startBackground(bus, "firewalld.log", "firewalld", "--nofork", "--nopid", "--system-config", cfg, "--log-target", "console")
	if err := retryUntil(60*time.Second, func() error { _, err := rt.exec(bus, "firewall-cmd", "--state"); return err }); err != nil {
		t.Fatalf("firewalld does not answer: %v", err)
	}
	fwcmd := func(args ...string) (string, error) {
		return rt.exec(bus, append([]string{"firewall-cmd"}, args...)...)
	}
	zone := func(dev string) string {
		out, _ := fwcmd("--get-zone-of-interface=" + dev)
		return strings.TrimSpace(out)
	}
	return &fwEnv{hostEnv: e, fwcmd: fwcmd}, zone
}

// TestHostFirewallFirewalldReportsOperatorsZone: a bridge Pier leaves in
// an operator's zone is named, with that reason, by `pierctl inspect` and
// `pierctl lint`: that zone, not Pier, decides what its containers may
// forward and reach.
func TestHostFirewallFirewalldReportsOperatorsZone(t *testing.T) {
	e, zone := startFirewalldNode(t)
	s := e.networks("")[0]
	e.sb.Node.MustRun(t, "ip", "link", "add", s.bridge, "type", "bridge")
	if out, err := e.fwcmd("--zone=internal", "--add-interface="+s.bridge); err != nil {
		t.Fatalf("firewall-cmd: %v %s", err, out)
	}
	c := e.add(s, false)
	ctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", e.sb.Node.Name, filepath.Join(e.binDir, "pierctl")}, args...)...)
		cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, e.env...)
		out, _ := cmd.Output() // lint exits 3 with warnings; the text is what is checked
		return string(out)
	}
	if text := ctl("inspect", "--network", s.name, "--conf-dir", e.confDir, "--cache-dir", e.cacheDir); !strings.Contains(text, "zone internal (left alone)") ||
		!strings.Contains(text, "someone else chose") {
		t.Errorf("inspect does not name the operator's zone:\n%s", text)
	}
	if text := ctl("lint", "--conf-dir", "", filepath.Join(e.confDir, "10-classic.conflist")); !strings.Contains(text, "zone internal, which someone else chose") {
		t.Errorf("lint does not name the operator's zone:\n%s", text)
	}
	e.del(s, c)
	if z := zone(s.bridge); z != "internal" {
		t.Errorf("after DEL, bridge %s is in zone %q", s.bridge, z)
	}
}
