package testnet

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// childEnv marks a test binary re-run by InNode: "<test name>|<node ns>".
const childEnv = "PIER_TESTNET_IN_NODE"

// InNode runs the calling test again in a child process — this test
// binary, with -test.run naming only this test — whose every thread is in
// the sandbox's node namespace, as a plugin process's are. Code that runs
// work on goroutines of its own (the plugin's DEL does) must not be
// tested on one thread switched into a namespace (Do): its goroutines
// would act on the host's namespace.
//
// In the parent InNode returns false once the child has finished,
// failing t with the child's output (which names the failed subtests) if
// the child failed; the test then returns. In the child it returns true
// and the test goes on; New in the child adopts the parent's node
// namespace, and the child's container namespaces are removed by the
// parent even if the child dies. Coverage counted in the child adds to
// the parent's (go test -cover).
func (s *Sandbox) InNode(t *testing.T) bool {
	t.Helper()
	if s.child {
		return true
	}
	args := []string{"netns", "exec", s.Node.Name, os.Args[0], "-test.run=^" + t.Name() + "$", "-test.v=true"}
	for _, a := range os.Args[1:] {
		if keepFlag(a) {
			args = append(args, a)
		}
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name()+"|"+s.Node.Name)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	s.removeChildNamespaces(t)
	if err != nil {
		t.Fatalf("in node namespace %s: %v\n%s", s.Node.Name, err, out.String())
	}
	t.Logf("in node namespace %s:\n%s", s.Node.Name, out.String())
	return false
}

// keepFlag reports whether a flag of the parent goes to the child: not
// the test selection, nor files the parent writes itself.
func keepFlag(arg string) bool {
	for _, f := range []string{"-test.run", "-test.v", "-test.testlogfile", "-test.coverprofile", "-test.count",
		"-test.cpuprofile", "-test.memprofile", "-test.blockprofile", "-test.mutexprofile", "-test.trace", "-test.outputdir"} {
		if arg == f || strings.HasPrefix(arg, f+"=") {
			return false
		}
	}
	return true
}

// adopted returns the sandbox of the parent when this process is the
// child InNode started for t.
func adopted(t testing.TB) (*Sandbox, bool) {
	v, ok := os.LookupEnv(childEnv)
	if !ok {
		return nil, false
	}
	name, node, ok := strings.Cut(v, "|")
	if !ok || name != t.Name() {
		return nil, false
	}
	return &Sandbox{Node: &NS{Name: node, Path: filepath.Join("/var/run/netns", node)}, t: t, child: true}, true
}

// containerPrefix names the container namespaces of a sandbox, so that
// its parent can find those a dead child left.
func (s *Sandbox) containerPrefix() string {
	return "pt-c-" + strings.TrimPrefix(s.Node.Name, "pt-node-") + "-"
}

func (s *Sandbox) removeChildNamespaces(t *testing.T) {
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return // no namespace at all
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), s.containerPrefix()) {
			n := &NS{Name: e.Name(), Path: filepath.Join("/var/run/netns", e.Name())}
			t.Logf("removing %s, left by the child", n.Name)
			n.Delete(t)
		}
	}
}
