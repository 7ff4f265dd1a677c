// Package testnet builds the throwaway network sandbox every networking test
// runs in, so that no test touches the host's own interfaces, routes,
// sysctls or firewall: a "node" namespace in which the plugin runs and holds
// its bridge, veths and nftables table, and container namespaces beside it.
//
// Namespaces get unique names (pt-node-…, pt-c-…) and are removed in
// t.Cleanup, also when the test fails, so nothing is left on the host. Tests
// never touch the host's own namespace: everything they run, they run with
// `ip netns exec` or inside an ns.NetNS closure.
package testnet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// RequireRoot skips the test unless it runs as root, which namespace tests need.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip)")
	}
}

// NS is a named network namespace under /var/run/netns.
type NS struct {
	Name string
	Path string
}

// UniqueName returns prefix followed by 8 random hex digits.
func UniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // crypto/rand never fails on Linux
	return prefix + hex.EncodeToString(b)
}

// NewNS creates a namespace named prefix+random, brings its loopback up and
// removes it when the test ends.
func NewNS(t testing.TB, prefix string) *NS {
	t.Helper()
	name := UniqueName(prefix)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, Path: filepath.Join("/var/run/netns", name)}
	t.Cleanup(func() { n.Delete(t) })
	n.MustRun(t, "ip", "link", "set", "lo", "up")
	return n
}

// Delete removes the namespace; deleting a node namespace takes its bridge,
// veths and nftables table with it. Missing namespaces are fine.
func (n *NS) Delete(t testing.TB) {
	if _, err := os.Stat(n.Path); os.IsNotExist(err) {
		return
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
	}
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Do runs f on a thread switched into the namespace.
func (n *NS) Do(f func() error) error {
	netns, err := ns.GetNS(n.Path)
	if err != nil {
		return err
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error { return f() })
}

// Sandbox is a node namespace plus the container namespaces made in it.
type Sandbox struct {
	Node  *NS
	t     testing.TB
	child bool // this process runs inside Node for its parent (InNode)
}

// New creates a sandbox with a fresh node namespace. It skips when not root.
// In a child started by InNode it returns the parent's sandbox.
func New(t testing.TB) *Sandbox {
	t.Helper()
	RequireRoot(t)
	if s, ok := adopted(t); ok {
		return s
	}
	return &Sandbox{Node: NewNS(t, "pt-node-"), t: t}
}

// Container creates one more container namespace. Its name starts with
// the sandbox's, so that the sandbox can find it (InNode).
func (s *Sandbox) Container() *NS {
	s.t.Helper()
	return NewNS(s.t, s.containerPrefix())
}

// PluginRun is one execution of a CNI plugin binary.
type PluginRun struct {
	Stdout, Stderr string
	ExitCode       int
}

// Exec runs a plugin binary inside the node namespace with the given CNI_*
// environment and stdin, the way a runtime would.
func (s *Sandbox) Exec(bin string, env []string, stdin []byte) PluginRun {
	return ExecIn(s.Node.Name, bin, env, stdin)
}

// ExecIn runs bin in the named namespace with env added to a minimal
// environment. A failure to start is reported as exit code -1.
func ExecIn(nsName, bin string, env []string, stdin []byte) PluginRun {
	cmd := exec.Command("ip", "netns", "exec", nsName, bin)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := PluginRun{Stdout: out.String(), Stderr: errb.String()}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			r.ExitCode = ee.ExitCode()
		} else {
			r.ExitCode = -1
			r.Stderr += fmt.Sprintf("start: %v", err)
		}
	}
	return r
}
