package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// The demo reproduces the classic bridge experiment — the reference bridge
// plugin's usual example config: a gateway bridge, masquerade, hairpin, a
// /24 with a default route and a /32 via the gateway — with "type": "pier",
// in a sandbox of its own: a node namespace where the plugin runs and two
// container namespaces. It never touches the host's network.
const demoConfig = `{
  "cniVersion": "0.2.0", "name": "mybridge", "type": "pier",
  "bridge": "cni_bridge0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": { "type": "pier-ipam", "subnet": "10.15.20.0/24", "dataDir": %q,
            "routes": [ { "dst": "0.0.0.0/0" }, { "dst": "1.1.1.1/32", "gw": "10.15.20.1" } ] }
}`

type demo struct {
	out      io.Writer
	binDir   string
	node     string
	ctrs     []string
	dataDir  string
	conf     []byte
	keep     bool
	confDir  string   // holds mybridge.conf, so pierctl inspect can find the network
	attached []string // container namespaces that got an ADD, for DEL
}

// Demo sandboxes are recognised by these prefixes (--clean removes them).
const (
	demoNSPrefix  = "pier-demo-"
	demoDirPrefix = "pier-demo-"
)

func demoCommand() command {
	return command{
		name: "demo", args: "",
		summary: "build the classic bridge experiment in a throwaway sandbox and explain it",
		help: `Creates a node namespace and two container namespaces, runs the pier
binary in the node for two ADDs, shows and explains what it built, pings
one container from the other, DELs both and removes the sandbox. It never
touches the host's interfaces, routes or firewall. Needs root.

With --keep the containers stay attached and the sandbox stays up for
exploring; 'pierctl demo --clean' removes every sandbox a demo left.`,
		setup: func(fs *flag.FlagSet) runner {
			binDir := fs.String("bin-dir", "", "directory holding the pier binary (default: next to pierctl)")
			keep := fs.Bool("keep", false, "leave the sandbox up (attached containers included) for exploring")
			clean := fs.Bool("clean", false, "remove the sandboxes and state earlier demos left (--keep, or a killed demo)")
			return func(e *env, args []string) int {
				if len(args) > 0 {
					return usageError(e, "demo", "takes no arguments")
				}
				if *clean {
					return cleanDemos(e)
				}
				return runDemo(e, *binDir, *keep)
			}
		},
	}
}

func runDemo(e *env, binDir string, keep bool) int {
	stdout, stderr := e.stdout, e.stderr
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "pierctl demo: needs root (it creates network namespaces)")
		return exitError
	}
	d := &demo{out: stdout, binDir: binDir, keep: keep}
	if d.binDir == "" {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "pierctl demo:", err)
			return exitError
		}
		d.binDir = filepath.Dir(self)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := d.run(ctx)
	if err != nil || !keep {
		if cerr := d.cleanup(); cerr != nil {
			fmt.Fprintln(stderr, "pierctl demo: cleanup:", cerr)
			if err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "pierctl demo:", err)
		return exitError
	}
	if keep {
		d.explore()
		return exitOK
	}
	fmt.Fprintln(stdout, "\nDemo complete: both containers were attached, talked to each other, and were removed.")
	return exitOK
}

func (d *demo) run(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(d.binDir, "pier")); err != nil {
		return fmt.Errorf("no pier binary in %s (build with: go build -o bin/ ./cmd/...): %w", d.binDir, err)
	}
	suffix := randomSuffix()
	var err error
	if d.dataDir, err = os.MkdirTemp("", demoDirPrefix); err != nil {
		return err
	}
	d.conf = []byte(fmt.Sprintf(demoConfig, d.dataDir))
	d.confDir = filepath.Join(d.dataDir, "net.d")
	if err := os.MkdirAll(d.confDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.confDir, "mybridge.conf"), d.conf, 0o644); err != nil {
		return err
	}
	d.node = demoNSPrefix + "node-" + suffix
	d.step("1. The sandbox", "A node namespace stands in for the host; the plugin runs in it. Two container namespaces sit beside it.")
	for _, name := range []string{d.node, demoNSPrefix + "c1-" + suffix, demoNSPrefix + "c2-" + suffix} {
		if _, err := sh("ip", "netns", "add", name); err != nil {
			return err
		}
		if name != d.node {
			d.ctrs = append(d.ctrs, name)
		}
		if _, err := sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	fmt.Fprintf(d.out, "  node: %s\n  containers: %s\n", d.node, strings.Join(d.ctrs, ", "))

	d.step("2. The network configuration", "The classic bridge config, unchanged except \"type\": \"pier\" and \"ipam.type\": \"pier-ipam\" (its state goes to a temporary dataDir).")
	fmt.Fprintln(d.out, indent(string(d.conf)))
	for i, c := range d.ctrs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := d.add(i, c); err != nil {
			return err
		}
	}
	if err := d.explain(); err != nil {
		return err
	}
	d.inspect()
	if err := d.ping(ctx); err != nil {
		return err
	}
	if d.keep {
		return nil
	}
	return d.delAll()
}

func (d *demo) add(i int, ctr string) error {
	env := d.env("ADD", i, ctr)
	d.step(fmt.Sprintf("3.%d ADD for container %d", i+1, i+1),
		"The runtime runs the plugin with the command and the container in environment variables and the config on stdin:")
	fmt.Fprintf(d.out, "  %s pier < mybridge.conf\n", strings.Join(env, " "))
	out, err := d.plugin(env)
	if err != nil {
		return fmt.Errorf("ADD for %s: %w", ctr, err)
	}
	d.attached = append(d.attached, ctr)
	fmt.Fprintln(d.out, "  The plugin answers with the result (in the config's cniVersion, 0.2.0):")
	var pretty bytes.Buffer
	if json.Indent(&pretty, out, "  ", "  ") == nil {
		out = pretty.Bytes()
	}
	fmt.Fprintln(d.out, "  "+string(out))
	return nil
}

func (d *demo) explain() error {
	d.step("4. What the plugin built on the node", "The bridge holds the gateway 10.15.20.1/24 because \"isGateway\": the containers' routes point at it.")
	d.show("ip", "netns", "exec", d.node, "ip", "-br", "addr", "show", "dev", "cni_bridge0")
	fmt.Fprintln(d.out, "  Each container has a veth pair: the host end is a port of the bridge (hairpin on because \"hairpinMode\"), its alias names the network, container and interface.")
	d.show("ip", "netns", "exec", d.node, "ip", "link", "show", "master", "cni_bridge0")
	d.show("ip", "netns", "exec", d.node, "bridge", "-d", "link", "show")
	fmt.Fprintln(d.out, "  Forwarding is on inside the node, so it routes for the containers:")
	d.show("ip", "netns", "exec", d.node, "sysctl", "net.ipv4.ip_forward")
	fmt.Fprintln(d.out, "  \"ipMasq\": one rule per network looks the source address up in a map of container addresses. Each container adds one element, commented with its id, that jumps to the network's chain: traffic to 10.15.20.0/24 (and multicast) is left alone, everything else is masqueraded. No chain per container.")
	d.show("ip", "netns", "exec", d.node, "nft", "list", "table", "inet", "pier")
	d.step("5. What the container sees", "eth0 with its address, a default route via the bridge's gateway (the IPAM route without \"gw\" takes the gateway), and the 1.1.1.1/32 route from the config:")
	for _, c := range d.ctrs {
		fmt.Fprintf(d.out, "  in %s:\n", c)
		d.show("ip", "netns", "exec", c, "ip", "-br", "addr", "show", "dev", "eth0")
		d.show("ip", "netns", "exec", c, "ip", "route")
	}
	return nil
}

// inspect shows the same attachment as pierctl explains it, run inside the
// node namespace as an operator on the node would.
func (d *demo) inspect() {
	self, err := os.Executable()
	if err != nil {
		return // the step is a bonus; the listings above said it all
	}
	d.step("6. The same, explained by pierctl", "pierctl inspect gathers one attachment from the kernel, nftables and the IPAM store, and says why each piece is there:")
	d.show("ip", "netns", "exec", d.node, self, "inspect", "demo-1", "--conf-dir", d.confDir, "--netns", "/var/run/netns/"+d.ctrs[0])
}

func (d *demo) ping(ctx context.Context) error {
	d.step("7. Container to container", "The second container pings the first through the bridge:")
	target := "10.15.20.2"
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", d.ctrs[1], "ping", "-c", "3", "-i", "0.2", "-W", "1", target)
	out, err := cmd.CombinedOutput()
	fmt.Fprintln(d.out, indent(strings.TrimSpace(string(out))))
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w", target, d.ctrs[1], err)
	}
	return nil
}

func (d *demo) delAll() error {
	d.step("8. DEL", "The runtime removes each container: the address is released, the veth pair deleted, the set element removed. The bridge stays for the next container.")
	for i := len(d.attached) - 1; i >= 0; i-- {
		c := d.attached[i]
		if _, err := d.plugin(d.env("DEL", i, c)); err != nil {
			return fmt.Errorf("DEL for %s: %w", c, err)
		}
		d.attached = d.attached[:i]
		fmt.Fprintf(d.out, "  DEL container %d: ok\n", i+1)
	}
	d.show("ip", "netns", "exec", d.node, "ip", "-br", "link", "show", "master", "cni_bridge0")
	d.show("ip", "netns", "exec", d.node, "nft", "list", "map", "inet", "pier", "mybridge-masq4")
	return nil
}

// cleanup removes whatever the demo made; it runs on success, failure and
// Ctrl-C alike. Deleting the node namespace takes the bridge and the
// nftables table with it.
func (d *demo) cleanup() error {
	var errs []string
	for i := len(d.attached) - 1; i >= 0; i-- {
		if _, err := d.plugin(d.env("DEL", i, d.attached[i])); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, n := range append(d.ctrs, d.node) {
		if n == "" {
			continue
		}
		if _, err := os.Stat("/var/run/netns/" + n); err == nil {
			if _, err := sh("ip", "netns", "del", n); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if d.dataDir != "" {
		if err := os.RemoveAll(d.dataDir); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func (d *demo) env(cmd string, i int, ctr string) []string {
	return []string{
		"CNI_COMMAND=" + cmd,
		fmt.Sprintf("CNI_CONTAINERID=demo-%d", i+1),
		"CNI_NETNS=/var/run/netns/" + ctr,
		"CNI_IFNAME=eth0",
		"CNI_PATH=" + d.binDir,
	}
}

// plugin runs the pier binary inside the node namespace, as a runtime on
// that node would.
func (d *demo) plugin(env []string) ([]byte, error) {
	cmd := exec.Command("ip", "netns", "exec", d.node, filepath.Join(d.binDir, "pier"))
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.Stdin = bytes.NewReader(d.conf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s%s", err, strings.TrimSpace(string(out)), strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// explore tells how to look around a kept sandbox.
func (d *demo) explore() {
	self, err := os.Executable()
	if err != nil {
		self = "pierctl"
	}
	fmt.Fprintf(d.out, "\nThe sandbox is still up. Look around, for example:\n"+
		"  ip netns exec %[1]s ip -d link show master cni_bridge0\n"+
		"  ip netns exec %[1]s nft list table inet pier\n"+
		"  ip netns exec %[2]s ip route\n"+
		"  ip netns exec %[1]s %[3]s inspect --network mybridge --conf-dir %[4]s\n"+
		"  ip netns exec %[1]s %[3]s leases --conf-dir %[4]s\n"+
		"Remove it with: %[3]s demo --clean\n", d.node, d.ctrs[0], self, d.confDir)
}

// cleanDemos removes every demo namespace and state directory: those of
// --keep runs and of demos killed before their cleanup. Deleting the node
// namespace takes the bridge, the veths and the nftables table with it.
func cleanDemos(e *env) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(e.stderr, "pierctl demo --clean: needs root")
		return exitError
	}
	names, err := filepath.Glob("/var/run/netns/" + demoNSPrefix + "*")
	if err != nil {
		return fail(e, "demo", err)
	}
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), demoDirPrefix+"*"))
	if err != nil {
		return fail(e, "demo", err)
	}
	code := exitOK
	for _, n := range names {
		if _, err := sh("ip", "netns", "del", filepath.Base(n)); err != nil {
			fmt.Fprintln(e.stderr, "pierctl demo --clean:", err)
			code = exitError
			continue
		}
		fmt.Fprintf(e.stdout, "removed namespace %s\n", filepath.Base(n))
	}
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintln(e.stderr, "pierctl demo --clean:", err)
			code = exitError
			continue
		}
		fmt.Fprintf(e.stdout, "removed %s\n", dir)
	}
	if len(names)+len(dirs) == 0 {
		fmt.Fprintln(e.stdout, "no demo sandbox to remove")
	}
	return code
}

func (d *demo) step(title, text string) {
	fmt.Fprintf(d.out, "\n== %s ==\n%s\n", title, text)
}

// show runs a read-only command and prints it with its output.
func (d *demo) show(args ...string) {
	out, err := sh(args...)
	if len(args) > 4 && args[0] == "ip" && args[1] == "netns" && args[2] == "exec" {
		fmt.Fprintf(d.out, "  [%s] $ %s\n", args[3], strings.Join(args[4:], " "))
	} else {
		fmt.Fprintf(d.out, "  $ %s\n", strings.Join(args, " "))
	}
	if err != nil {
		fmt.Fprintf(d.out, "  (%v)\n", err)
	}
	if s := strings.TrimSpace(out); s != "" {
		fmt.Fprintln(d.out, indent(s))
	}
}

func sh(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func randomSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b) // crypto/rand does not fail on Linux
	return hex.EncodeToString(b)
}
