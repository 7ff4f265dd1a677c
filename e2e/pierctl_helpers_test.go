package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ctlRun is one pierctl execution.
type ctlRun struct {
	stdout, stderr string
	code           int
}

// ctlEnv is a node sandbox set up for pierctl: a config directory, a libcni
// cache directory and the plugin path, all private to the test.
type ctlEnv struct {
	*node
	confDir, cacheDir string
}

func newCtlEnv(t *testing.T) *ctlEnv {
	t.Helper()
	n := newNode(t)
	return &ctlEnv{node: n, confDir: t.TempDir(), cacheDir: t.TempDir()}
}

// writeConf writes a config file into the env's config directory.
func (c *ctlEnv) writeConf(name, content string) string {
	c.t.Helper()
	p := filepath.Join(c.confDir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// ctl runs pierctl inside the node namespace, as an operator on the node
// would, with the env's directories prepended to args' flags.
func (c *ctlEnv) ctl(args ...string) ctlRun {
	c.t.Helper()
	return ctlIn(c.t, c.sb.Node.Name, c.binDir, args...)
}

// withDirs adds the env's directories to a command's flags.
func (c *ctlEnv) withDirs(args ...string) []string {
	return append(args, "--conf-dir", c.confDir, "--cache-dir", c.cacheDir, "--bin-dir", c.cniPath)
}

// ctlIn runs pierctl in the named namespace ("" runs it where the test runs,
// which is only done for commands that do not touch the network).
func ctlIn(t *testing.T, nsName, binDir string, args ...string) ctlRun {
	t.Helper()
	bin := filepath.Join(binDir, "pierctl")
	var cmd *exec.Cmd
	if nsName == "" {
		cmd = exec.Command(bin, args...)
	} else {
		cmd = exec.Command("ip", append([]string{"netns", "exec", nsName, bin}, args...)...)
	}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := ctlRun{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("pierctl %s: %v", strings.Join(args, " "), err)
	}
	if strings.Contains(r.stderr, "goroutine ") {
		t.Fatalf("pierctl %s panicked:\n%s", strings.Join(args, " "), r.stderr)
	}
	return r
}

// mustCtl runs pierctl and wants exit status code.
func (c *ctlEnv) mustCtl(code int, args ...string) ctlRun {
	c.t.Helper()
	r := c.ctl(args...)
	if r.code != code {
		c.t.Fatalf("pierctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	return r
}

func ctlJSON[T any](t *testing.T, r ctlRun) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("decode pierctl output: %v\n%s", err, r.stdout)
	}
	return v
}
