package e2e

// The classic bridge experiment on hosts whose own filters drop forwarded
// traffic: a plain nftables ruleset, iptables-legacy, a real Docker engine.
// The same
// checks run for Pier and for the reference bridge + portmap + firewall
// chain (Debian's /usr/lib/cni) side by side, on two bridges of one node;
// Pier's must all pass, the reference's are reported.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// hostEnv is a node with a client host outside it and pierctl's
// directories.
type hostEnv struct {
	*ctlEnv
	client  *testnet.NS
	listing func() string // the host's filters, for "nothing left"
	docker  *dockerd      // nil on hosts without Docker
	// env is added to pierctl's environment, and so to the plugins'.
	env []string
}

func newHostEnv(t *testing.T, n *node) *hostEnv {
	t.Helper()
	e := &hostEnv{ctlEnv: &ctlEnv{node: n, confDir: t.TempDir(), cacheDir: t.TempDir()}}
	e.client = newClientHost(t, n)
	startEcho(t, e.client, "tcp/:7")
	e.listing = func() string {
		out, _ := n.sb.Node.Run("nft", "list", "ruleset")
		if legacy, err := n.sb.Node.Run("iptables-legacy-save"); err == nil {
			out += legacy
		}
		return out
	}
	return e
}

// hostNet is one network of the comparison.
type hostNet struct {
	name, bridge, subnet string
	hostPort             int
	pier                 bool
	gw                   string
}

func (e *hostEnv) networks(pierExtra string) []hostNet {
	nets := []hostNet{
		{name: "classic", bridge: "cni_bridge0", subnet: "10.15.20", hostPort: 8080, pier: true},
		{name: "classicref", bridge: "cni_ref0", subnet: "10.15.21", hostPort: 8081},
	}
	for i := range nets {
		s := &nets[i]
		s.gw = s.subnet + ".1"
		var conf string
		if s.pier {
			conf = fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [{"type": "pier", "bridge": %q,
  "isGateway": true, "ipMasq": true, "hairpinMode": true, "capabilities": {"portMappings": true} %s,
  "ipam": {"type": "pier-ipam", "subnet": "%s.0/24", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}}]}`,
				s.name, s.bridge, pierExtra, s.subnet, e.dataDir)
		} else {
			conf = fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [{"type": "bridge", "bridge": %q,
  "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": {"type": "host-local", "subnet": "%s.0/24", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}, {"type": "firewall"}]}`,
				s.name, s.bridge, s.subnet, filepath.Join(e.dataDir, "host-local"))
		}
		e.writeConf("10-"+s.name+".conflist", conf)
	}
	return nets
}

// hostContainer is one container of a compared network: its namespace and
// address.
type hostContainer struct {
	ns   *testnet.NS
	addr string
}

func (e *hostEnv) add(s hostNet, mapPort bool) hostContainer {
	e.t.Helper()
	ns := e.sb.Container()
	args := []string{"add"}
	if mapPort {
		args = append(args, "--port-mapping", fmt.Sprintf("%d:80/tcp", s.hostPort))
	}
	e.pierctl(append(args, s.name, ns.Path)...)
	ip := strings.Fields(ns.MustRun(e.t, "ip", "-4", "-o", "addr", "show", "dev", "eth0"))[3]
	return hostContainer{ns: ns, addr: strings.Split(ip, "/")[0]}
}

func (e *hostEnv) del(s hostNet, c hostContainer) {
	e.t.Helper()
	e.pierctl("del", s.name, c.ns.Path)
}

// pierctl runs a libcni command of pierctl in the node with the env's
// directories and environment.
func (e *hostEnv) pierctl(args ...string) {
	e.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", e.sb.Node.Name, filepath.Join(e.binDir, "pierctl")}, e.withDirs(args...)...)...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, e.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("pierctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// check is one named check's outcome.
type check struct {
	name string
	err  error
}

// reachChecks runs, for one network, what a container on a host with a
// firewall must be able to do — be pinged by and reach a Docker container
// (on a Docker host), reach an outside host through masquerade, reach
// another container of its bridge, answer on a host port to a client
// outside the node — and, for Pier, that DEL of the last container leaves
// no forward rules. The checks are returned in order; the containers are
// deleted at the end.
func (e *hostEnv) reachChecks(s hostNet) []check {
	t := e.t
	c1, c2 := e.add(s, true), e.add(s, false)
	startEcho(t, c1.ns, "tcp/:80")
	var out []check
	add := func(name string, err error) { out = append(out, check{name, err}) }
	if e.docker != nil {
		add("the Docker container pings the container", e.docker.exec("ping", "-c1", "-W2", c1.addr))
		_, err := c1.ns.Run("ping", "-c1", "-W2", e.docker.addr)
		add("the container reaches the Docker container", err)
	}
	reply, err := echoFrom(t, c1.ns, "tcp/198.51.100.2:7")
	if err == nil && !strings.HasPrefix(reply, "198.51.100.1:") {
		err = fmt.Errorf("the outside host saw %q, not the node's address", reply)
	}
	add("a container reaches an outside host (masquerade)", err)
	_, err = c2.ns.Run("ping", "-c1", "-W2", c1.addr)
	add("a container reaches another on its bridge", err)
	_, err = echoFrom(t, e.client, fmt.Sprintf("tcp/198.51.100.1:%d", s.hostPort))
	add("a host port answers a client outside the node", err)
	e.del(s, c1)
	e.del(s, c2)
	if s.pier {
		err = nil
		if l := e.listing(); strings.Contains(l, "pier: forward") || strings.Contains(l, "PIER-FORWARD") {
			err = fmt.Errorf("forward rules left:\n%s", l)
		}
		add("DEL of the last container leaves no forward rules", err)
	}
	return out
}

// compare runs the checks for Pier and the reference chain and fails the
// test for Pier's failures; both are logged as a table.
func (e *hostEnv) compare(host string, pierExtra string) {
	t := e.t
	var table strings.Builder
	fmt.Fprintf(&table, "host: %s\n", host)
	for _, s := range e.networks(pierExtra) {
		who := "reference bridge+portmap+firewall"
		if s.pier {
			who = "pier"
		}
		passed := 0
		checks := e.reachChecks(s)
		for _, c := range checks {
			mark := "pass"
			if c.err != nil {
				mark = "FAIL"
				if s.pier {
					t.Errorf("%s, pier: %s: %v", host, c.name, c.err)
				}
			} else {
				passed++
			}
			fmt.Fprintf(&table, "  %-34s %-4s %s\n", who, mark, c.name)
		}
		fmt.Fprintf(&table, "  %-34s %d/%d passed\n", who, passed, len(checks))
	}
	t.Log("\n" + table.String())
	if path := os.Getenv("PIER_HOSTFW_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, _ = f.WriteString(table.String())
			_ = f.Close()
		}
	}
}

// TestHostFirewallNftables: a node whose nftables ruleset has
// `inet filter forward` with policy drop.
func TestHostFirewallNftables(t *testing.T) {
	e := newHostEnv(t, newNode(t))
	e.sb.Node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
	e.compare("nftables inet filter forward policy drop", "")
}

// TestHostFirewallLegacy: a node with `iptables-legacy -P FORWARD DROP`.
func TestHostFirewallLegacy(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/iptables-legacy"); err != nil {
		t.Skip("needs iptables-legacy (Debian: iptables)")
	}
	e := newHostEnv(t, newNode(t))
	e.sb.Node.MustRun(t, "iptables-legacy", "-P", "FORWARD", "DROP")
	e.compare("iptables-legacy -P FORWARD DROP", "")
}

// TestHostFirewallOff: with firewallBackend none, Pier leaves the host's
// filters alone, and its containers cannot leave the node: what lint
// warns about.
func TestHostFirewallOff(t *testing.T) {
	e := newHostEnv(t, newNode(t))
	e.sb.Node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
	s := e.networks(`, "firewallBackend": "none"`)[0]
	c := e.add(s, false)
	if reply, err := echoFrom(t, c.ns, "tcp/198.51.100.2:7"); err == nil {
		t.Errorf("with firewallBackend none, the host's drop let %q through", reply)
	}
	if l := e.listing(); strings.Contains(l, "pier: forward") {
		t.Errorf("with firewallBackend none, Pier wrote into the host's filters:\n%s", l)
	}
	e.del(s, c)
}

// TestIngressSameBridge: with ingressPolicy same-bridge, a host outside
// the node that routes to the containers' subnet cannot open connections
// to them, while containers of the bridge reach each other, replies come
// back and host ports answer — on a node whose filters accept everything.
func TestIngressSameBridge(t *testing.T) {
	e := newHostEnv(t, newNode(t))
	e.client.MustRun(t, "ip", "route", "add", "10.15.20.0/24", "via", "198.51.100.1")
	s := e.networks(`, "ingressPolicy": "same-bridge"`)[0]
	c1, c2 := e.add(s, true), e.add(s, false)
	startEcho(t, c1.ns, "tcp/:80")
	if reply, err := echoFrom(t, e.client, "tcp/"+c1.addr+":80"); err == nil {
		t.Errorf("same-bridge: a host outside reached the container directly: %q", reply)
	}
	if _, err := echoFrom(t, e.client, "tcp/198.51.100.1:8080"); err != nil {
		t.Errorf("same-bridge: the host port: %v", err)
	}
	if _, err := echoFrom(t, c2.ns, "tcp/"+c1.addr+":80"); err != nil {
		t.Errorf("same-bridge: a neighbour on the bridge: %v", err)
	}
	if _, err := echoFrom(t, c1.ns, "tcp/198.51.100.2:7"); err != nil {
		t.Errorf("same-bridge: the container's own connection out: %v", err)
	}
	e.del(s, c1)
	e.del(s, c2)
}

// dockerd is a Docker engine of the test's runtimeHost, and its one
// container.
type dockerd struct {
	rt   *runtimeHost
	cli  []string
	name string
	addr string
}

func (d *dockerd) exec(argv ...string) error {
	_, err := d.rt.exec(nil, append(append(d.cli, "exec", d.name), argv...)...)
	return err
}

// startDockerd runs Debian's dockerd in the runtimeHost's namespaces: its
// iptables rules, docker0 and containers live in the node namespace only,
// its state in the test's temp dir and the namespace's own /run.
func startDockerd(t *testing.T, rt *runtimeHost, busybox string) *dockerd {
	t.Helper()
	sock := "unix:///run/pier-e2e-docker.sock"
	rt.startBackground(nil, "dockerd.log", "dockerd", "--host", sock,
		"--data-root", filepath.Join(rt.dir, "docker"), "--exec-root", "/run/pier-e2e-docker",
		"--pidfile", "/run/pier-e2e-docker.pid", "--storage-driver", "vfs",
		"--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", rt.cgroupParent)
	d := &dockerd{rt: rt, cli: []string{"/usr/bin/docker", "--host", sock}, name: "pause1"}
	if err := retryUntil(60*time.Second, func() error { _, err := rt.exec(nil, append(d.cli, "version")...); return err }); err != nil {
		t.Fatalf("dockerd does not answer: %v", err)
	}
	layer := filepath.Join(rt.dir, "busybox.tar")
	if err := os.WriteFile(layer, busyboxLayer(t, busybox), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.exec(nil, append(d.cli, "import", layer, runtimeImage)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = rt.exec(nil, append(d.cli, "rm", "--force", d.name)...) })
	if _, err := rt.exec(nil, append(d.cli, "run", "--detach", "--name", d.name, runtimeImage, "sleep", "3600")...); err != nil {
		t.Fatal(err)
	}
	out, err := rt.exec(nil, append(d.cli, "inspect", "--format", "{{.NetworkSettings.IPAddress}}", d.name)...)
	if err != nil {
		t.Fatal(err)
	}
	d.addr = strings.TrimSpace(out)
	return d
}

// TestHostFirewallDocker: a host that runs Docker. A real dockerd (Debian's 20.10,
// iptables-nft) runs a container on docker0 with its FORWARD policy DROP
// and its DOCKER-USER chain; Pier's containers and the reference chain's
// then go through the same checks, the Docker container's ping of the CNI
// container first.
func TestHostFirewallDocker(t *testing.T) {
	tools := requireRuntimeTools(t, "dockerd", "nsenter", "iptables-nft")
	if _, err := os.Stat("/usr/bin/docker"); err != nil {
		t.Fatal("needs Debian's docker client /usr/bin/docker (package docker.io)")
	}
	rt := newRuntimeHost(t)
	n := &node{t: t, sb: rt.sb, binDir: testnet.Binaries(t), dataDir: t.TempDir()}
	n.cniPath = n.binDir + ":/usr/lib/cni"
	e := newHostEnv(t, n)
	e.docker = startDockerd(t, rt, tools["busybox"])
	if rs := n.sb.Node.MustRun(t, "iptables-nft", "-S", "FORWARD"); !strings.Contains(rs, "-P FORWARD DROP") || !strings.Contains(rs, "DOCKER-USER") {
		t.Fatalf("dockerd did not set up its forward chain as expected:\n%s", rs)
	}
	e.compare("Docker 20.10 (iptables-nft, FORWARD policy DROP, DOCKER-USER)", "")
}

// TestHostFirewallTooling: on a node whose nftables forward chain drops,
// STATUS stays 0 (Pier handles it), `pierctl inspect` names the host
// filter Pier opened and why, and the bridge's MTU and why; `pierctl lint`
// warns when the config turns Pier's handling off, and not when it is on.
func TestHostFirewallTooling(t *testing.T) {
	e := newHostEnv(t, newNode(t))
	e.sb.Node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
	s := e.networks("")[0]
	e.mustCtl(0, e.withDirs("status", s.name)...)
	c := e.add(s, false)
	text := e.mustCtl(0, "inspect", "--network", s.name, "--conf-dir", e.confDir, "--cache-dir", e.cacheDir).stdout
	for _, want := range []string{"nftables inet filter forward", "inet filter forward has policy drop", "marker cni_bridge0.bridge", `"mtu" unset`} {
		if !strings.Contains(text, want) {
			t.Errorf("inspect lacks %q:\n%s", want, text)
		}
	}
	e.del(s, c)
	conf := filepath.Join(e.confDir, "10-classic.conflist")
	if r := e.ctl("lint", "--conf-dir", "", conf); strings.Contains(r.stdout, "drops forwarded traffic") {
		t.Errorf("lint warns although Pier handles the host's filters:\n%s", r.stdout)
	}
	off := e.writeConf("30-off.conf", fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "off", "type": "pier", "bridge": "pier-off",
  "ipMasq": true, "firewallBackend": "none", "ipam": {"type": "pier-ipam", "subnet": "10.15.30.0/24", "dataDir": %q}}`, e.dataDir))
	if r := e.ctl("lint", "--conf-dir", "", off); r.code != 3 || !strings.Contains(r.stdout, "inet filter forward has policy drop") {
		t.Errorf("lint of a config leaving a dropping host alone: exit %d\n%s", r.code, r.stdout)
	}
}

// TestMTUFromUplink: without "mtu", a bridge Pier creates takes the MTU of
// the interface of the node's default route, and so do the containers'
// interfaces; with "mtu", the config wins.
func TestMTUFromUplink(t *testing.T) {
	n := newNode(t)
	newClientHost(t, n)
	n.sb.Node.MustRun(t, "ip", "link", "set", "uplink0", "mtu", "1400")
	n.sb.Node.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.2")
	for _, tc := range []struct {
		name, bridge, key string
		want              int
	}{
		{"uplink", "pier-mtu0", "", 1400},
		{"config", "pier-mtu1", `"mtu": 1300,`, 1300},
	} {
		conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "mtu%s", "type": "pier", "bridge": %q, %s
  "ipam": {"type": "pier-ipam", "subnet": "10.15.4%d.0/24", "dataDir": %q}}`, tc.name, tc.bridge, tc.key, tc.want%10, n.dataDir)
		c := n.container("mtu-" + tc.name)
		n.mustAdd(c, conf)
		for _, l := range []struct {
			ns  *testnet.NS
			dev string
		}{{n.sb.Node, tc.bridge}, {c.ns, "eth0"}} {
			if got := ipJSON[[]ipLink](t, l.ns, "link", "show", "dev", l.dev)[0].MTU; got != tc.want {
				t.Errorf("%s: %s has MTU %d, want %d", tc.name, l.dev, got, tc.want)
			}
		}
		n.mustDel(c, conf)
	}
}

// TestMeasureHostFirewall reports (never fails on) the whole-process ADD
// and DEL latency of `pier` on a node whose nftables forward chain drops:
// a network whose host accepts are in place (firewallBackend auto) next to
// one that leaves the host alone (none), on two bridges of the same node,
// interleaved, 30 pairs each after 3 of warm-up, with a resident container
// on each bridge (so the accepts stay), and the first ADD on a bridge,
// which opens the host's filter; beside them a third network (auto) whose
// bridge has no resident container, so that each of its ADDs is its
// bridge's first (the host's filter opened again) and each DEL its last
// (the accepts removed). It runs only with PIER_MEASURE=1:
//
//	PIER_MEASURE=1 go test -count=1 -run TestMeasureHostFirewall -v ./e2e/
func TestMeasureHostFirewall(t *testing.T) {
	if os.Getenv("PIER_MEASURE") == "" {
		t.Skip("a measurement: set PIER_MEASURE=1")
	}
	n := newNode(t)
	n.sb.Node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
	bin := filepath.Join(n.binDir, "pier")
	conf := func(name, bridge, subnet, backend string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"pier","bridge":%q,"isGateway":true,"ipMasq":true,"firewallBackend":%q,
			"ipam":{"type":"pier-ipam","subnet":%q,"dataDir":%q}}`, name, bridge, backend, subnet, n.dataDir)
	}
	confs := map[string]string{"auto": conf("fwauto", "pfa0", "10.72.0.0/16", "auto"), "none": conf("fwnone", "pfn0", "10.73.0.0/16", "none"),
		"emptied": conf("fwempty", "pfe0", "10.74.0.0/16", "auto")}
	timed := func(verb, mode, id string, ns *testnet.NS) time.Duration {
		env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + ns.Path, "CNI_IFNAME=eth0", "CNI_PATH=" + n.binDir}
		start := time.Now()
		cmd, err := n.sb.Start(bin, env, []byte(confs[mode]))
		if err != nil {
			t.Fatal(err)
		}
		r := testnet.Outcome(cmd, cmd.Wait())
		took := time.Since(start)
		if r.ExitCode != 0 {
			t.Fatalf("%s %s: %s %s", verb, mode, r.Stdout, r.Stderr)
		}
		return took
	}
	first := map[string]time.Duration{}
	for _, mode := range []string{"auto", "none"} {
		first[mode] = timed("ADD", mode, "resident-"+mode, n.sb.Container())
	}
	const warmup, runs = 3, 30
	adds, dels := map[string][]time.Duration{}, map[string][]time.Duration{}
	ns := map[string]*testnet.NS{"auto": n.sb.Container(), "none": n.sb.Container(), "emptied": n.sb.Container()}
	modes := []string{"auto", "none", "emptied"}
	for i := range warmup + runs {
		for k := range modes {
			mode := modes[(i+k)%len(modes)]
			id := fmt.Sprintf("m-%s-%d", mode, i)
			a := timed("ADD", mode, id, ns[mode])
			d := timed("DEL", mode, id, ns[mode])
			if i >= warmup {
				adds[mode], dels[mode] = append(adds[mode], a), append(dels[mode], d)
			}
		}
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	for _, mode := range []string{"auto", "none"} {
		t.Logf("firewallBackend %-4s: first ADD on the bridge %v; then ADD median %v, DEL median %v", mode, first[mode], med(adds[mode]), med(dels[mode]))
	}
	t.Logf("with host accepts / without: ADD %.2f×, DEL %.2f×",
		float64(med(adds["auto"]))/float64(med(adds["none"])), float64(med(dels["auto"]))/float64(med(dels["none"])))
	t.Logf("firewallBackend auto on a bridge each DEL empties: ADD median %v (%.2f× the ADD with the accepts in place), DEL median %v (%.2f×)",
		med(adds["emptied"]), float64(med(adds["emptied"]))/float64(med(adds["auto"])),
		med(dels["emptied"]), float64(med(dels["emptied"]))/float64(med(dels["auto"])))
}

// TestHostFirewallFirewalld: firewalld (Debian's 1.3, nftables backend)
// with its own dbus-daemon, both in the runtimeHost's namespaces: it runs
// without systemd. The bus listens in the test's temp dir, and the plugins
// find it through DBUS_SYSTEM_BUS_ADDRESS (the host's bus is never
// asked). firewalld's forward chain rejects what no zone lets through, so
// Pier puts its bridge into its zone pier over D-Bus (the zone and its
// policy pier-forward made once, in the permanent configuration, which is
// a directory of the test's); the reference firewall plugin, finding
// firewalld on the bus, puts its containers' addresses into zone trusted.
// A reload forgets runtime bindings, and the next CHECK puts the bridge
// back.
func TestHostFirewallFirewalld(t *testing.T) {
	requireRuntimeTools(t, "firewalld", "firewall-cmd", "dbus-daemon", "nsenter")
	rt := newRuntimeHost(t)
	n := &node{t: t, sb: rt.sb, binDir: testnet.Binaries(t), dataDir: t.TempDir()}
	n.cniPath = n.binDir + ":/usr/lib/cni"
	e := newHostEnv(t, n)
	bus := []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(rt.dir, "system_bus_socket")}
	e.env = bus
	mustExec := func(argv ...string) string {
		t.Helper()
		out, err := rt.exec(bus, argv...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
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
	zone := func(dev string) string {
		out, _ := rt.exec(bus, "firewall-cmd", "--get-zone-of-interface="+dev)
		return strings.TrimSpace(out)
	}
	listing := e.listing
	e.listing = func() string {
		return listing() + "\nzone pier's interfaces: " + mustExec("firewall-cmd", "--zone=pier", "--list-interfaces")
	}
	e.compare("firewalld 1.3 (nftables backend, default zone public)", "")

	s := e.networks("")[0]
	c := e.add(s, false)
	if z := zone(s.bridge); z != "pier" {
		t.Fatalf("after ADD, bridge %s is in zone %q", s.bridge, z)
	}
	mustExec("firewall-cmd", "--reload")
	if z := zone(s.bridge); z == "pier" {
		t.Fatalf("firewall-cmd --reload kept the runtime binding: the test shows nothing")
	}
	e.pierctl("check", s.name, c.ns.Path)
	if z := zone(s.bridge); z != "pier" {
		t.Errorf("after a reload and CHECK, bridge %s is in zone %q", s.bridge, z)
	}
	e.del(s, c)
	if z := zone(s.bridge); z == "pier" {
		t.Errorf("DEL of the last container left bridge %s in zone pier", s.bridge)
	}
}

// TestConcurrentFirstADDs: containers started at once on a fresh node
// whose forward chain drops all find the bridge without its setup; the
// node-wide lock makes exactly one of them open the host's filter, and
// every one of them can leave the node.
func TestConcurrentFirstADDs(t *testing.T) {
	n := newNode(t)
	client := newClientHost(t, n)
	startEcho(t, client, "tcp/:7")
	n.sb.Node.MustRun(t, "nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }")
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "burst", "type": "pier", "bridge": "pier-burst",
  "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "ipam": {"type": "pier-ipam", "subnet": "10.15.50.0/24", "dataDir": %q}}`, n.dataDir)
	const k = 6
	ctrs := make([]attachment, k)
	runs := make([]testnet.PluginRun, k)
	for i := range ctrs {
		ctrs[i] = n.container(fmt.Sprintf("burst-%d", i))
	}
	var wg sync.WaitGroup
	for i := range ctrs {
		wg.Add(1)
		go func() { defer wg.Done(); runs[i] = n.call("ADD", ctrs[i], conf) }()
	}
	wg.Wait()
	for i, r := range runs {
		if r.ExitCode != 0 {
			t.Fatalf("ADD %d: %s %s", i, r.Stdout, r.Stderr)
		}
	}
	rs := n.sb.Node.MustRun(t, "nft", "list", "chain", "inet", "filter", "forward")
	if got := strings.Count(rs, "pier: forward of bridge pier-burst"); got != 3 {
		t.Errorf("%d rules of Pier's in the host's chain, want 3:\n%s", got, rs)
	}
	for _, c := range ctrs {
		if _, err := echoFrom(t, c.ns, "tcp/198.51.100.2:7"); err != nil {
			t.Errorf("%s cannot leave the node: %v", c.id, err)
		}
	}
}
