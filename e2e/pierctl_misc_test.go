package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

var ctlCommands = []string{"add", "del", "check", "gc", "status", "inspect", "leases", "lint", "migrate", "netns", "demo", "completion"}

// TestPierctlHelp: every command answers -h on stdout with exit 0, and the
// top level lists them all; usage errors exit 2.
func TestPierctlHelp(t *testing.T) {
	bin := testnet.Binaries(t)
	top := ctlIn(t, "", bin, "-h")
	for _, c := range ctlCommands {
		if !strings.Contains(top.stdout, "\n  "+c+" ") {
			t.Errorf("pierctl -h does not list %s", c)
		}
		for _, h := range []string{"-h", "--help"} {
			r := ctlIn(t, "", bin, c, h)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "usage: pierctl "+c+" ") {
				t.Errorf("pierctl %s %s: exit %d\n%s%s", c, h, r.code, r.stdout, r.stderr)
			}
		}
		if r := ctlIn(t, "", bin, "help", c); r.code != 0 || !strings.HasPrefix(r.stdout, "usage: pierctl "+c) {
			t.Errorf("pierctl help %s: exit %d", c, r.code)
		}
	}
	for _, args := range [][]string{{}, {"nosuch"}, {"add", "--nosuchflag"}, {"completion", "zsh"}, {"netns", "frob"}, {"leases", "-o", "yaml"}} {
		if r := ctlIn(t, "", bin, args...); r.code != 2 {
			t.Errorf("pierctl %v: exit %d, want 2", args, r.code)
		}
	}
}

func TestPierctlCompletion(t *testing.T) {
	bin := testnet.Binaries(t)
	r := ctlIn(t, "", bin, "completion", "bash")
	if r.code != 0 || !strings.Contains(r.stdout, "complete -F _pierctl pierctl") || !strings.Contains(r.stdout, "--port-mapping") {
		t.Fatalf("completion: exit %d\n%s", r.code, r.stdout)
	}
	script := filepath.Join(t.TempDir(), "pierctl.bash")
	if err := os.WriteFile(script, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	// Load it and complete "pierctl ins" and "pierctl netns " as bash would.
	probe := `source ` + script + `
COMP_WORDS=(pierctl ins); COMP_CWORD=1; _pierctl; echo "${COMPREPLY[@]}"
COMP_WORDS=(pierctl netns ""); COMP_CWORD=2; _pierctl; echo "${COMPREPLY[@]}"`
	out, err := exec.Command("bash", "-c", probe).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || len(lines) != 2 || lines[0] != "inspect" || !strings.HasPrefix(lines[1], "add del list") {
		t.Fatalf("completion in bash: %v\n%s", err, out)
	}
}

// TestPierctlNetns creates, lists and deletes a named namespace.
func TestPierctlNetns(t *testing.T) {
	testnet.RequireRoot(t)
	bin := testnet.Binaries(t)
	name := testnet.UniqueName("pt-ctl-")
	t.Cleanup(func() { (&testnet.NS{Name: name, Path: "/var/run/netns/" + name}).Delete(t) })
	if r := ctlIn(t, "", bin, "netns", "add", name); r.code != 0 || strings.TrimSpace(r.stdout) != "/var/run/netns/"+name {
		t.Fatalf("netns add: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	if out, err := exec.Command("ip", "netns", "exec", name, "ip", "-br", "link", "show", "lo").CombinedOutput(); err != nil || !strings.Contains(string(out), "UNKNOWN") {
		t.Fatalf("loopback of the new namespace is not up: %v %s", err, out)
	}
	if r := ctlIn(t, "", bin, "netns", "list", "--cache-dir", t.TempDir()); r.code != 0 || !strings.Contains(r.stdout, name) {
		t.Fatalf("netns list: exit %d %s", r.code, r.stdout)
	}
	if r := ctlIn(t, "", bin, "netns", "add", name); r.code != 1 {
		t.Fatalf("netns add of an existing name: exit %d", r.code)
	}
	if r := ctlIn(t, "", bin, "netns", "del", name); r.code != 0 {
		t.Fatalf("netns del: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat("/var/run/netns/" + name); !os.IsNotExist(err) {
		t.Fatalf("netns del left %s: %v", name, err)
	}
}

// TestPierctlDemoKeepClean runs the demo with --keep, finds its sandbox up
// with the containers attached, and removes it with --clean.
func TestPierctlDemoKeepClean(t *testing.T) {
	testnet.RequireRoot(t)
	bin := testnet.Binaries(t)
	r := ctlIn(t, "", bin, "demo", "--keep", "--bin-dir", bin)
	names := regexp.MustCompile(`pier-demo-(node|c1|c2)-[0-9a-f]+`).FindAllString(r.stdout, -1)
	t.Cleanup(func() {
		for _, n := range names {
			(&testnet.NS{Name: n, Path: "/var/run/netns/" + n}).Delete(t)
		}
	})
	if r.code != 0 || len(names) == 0 {
		t.Fatalf("demo --keep: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"why: \"isGateway\"", "The sandbox is still up", "demo --clean"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("demo --keep output lacks %q", want)
		}
	}
	node := names[0]
	if out, err := exec.Command("ip", "netns", "exec", node, "ip", "-br", "link", "show", "master", "cni_bridge0").CombinedOutput(); err != nil || strings.Count(string(out), "veth") != 2 {
		t.Fatalf("kept demo has no two ports: %v\n%s", err, out)
	}
	c := ctlIn(t, "", bin, "demo", "--clean")
	if c.code != 0 || !strings.Contains(c.stdout, "removed namespace "+node) {
		t.Fatalf("demo --clean: exit %d\n%s%s", c.code, c.stdout, c.stderr)
	}
	for _, n := range names {
		if _, err := os.Stat("/var/run/netns/" + n); !os.IsNotExist(err) {
			t.Errorf("demo --clean left %s", n)
		}
	}
}
