package ipamcni

// End-to-end: build cmd/pier-ipam and drive it as a runtime would, through
// the CNI_* environment, stdin and stdout. No namespace is needed: IPAM only
// reads and writes its dataDir.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

type plugin struct {
	bin, dataDir string
}

// call is one invocation: the CNI command, container, spec version, and JSON
// members to add to the network config (each ending with a comma).
type call struct {
	command, container, version, extra string
}

func buildPlugin(t *testing.T) *plugin {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "pier-ipam")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/pier-cni/pier/cmd/pier-ipam").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return &plugin{bin: bin, dataDir: t.TempDir()}
}

// run executes one CNI command and returns stdout and whether it succeeded.
func (p *plugin) run(t *testing.T, c call) (string, bool) {
	t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":"e2e","type":"bridge",%s
		"ipam":{"type":"pier-ipam","subnet":"10.15.20.0/24","dataDir":%q,
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"1.1.1.1/32","gw":"10.15.20.1"}]}}`, c.version, c.extra, p.dataDir)
	cmd := exec.Command(p.bin)
	cmd.Stdin = strings.NewReader(conf)
	cmd.Env = []string{"CNI_COMMAND=" + c.command, "CNI_CONTAINERID=" + c.container, "CNI_NETNS=/var/run/netns/none",
		"CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(p.bin)}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return stdout.String(), err == nil
}

func TestPluginLifecycle(t *testing.T) {
	p := buildPlugin(t)

	// The classic bridge experiment's IPAM config, spec 0.2.0: ip4.ip and
	// ip4.routes.
	out, ok := p.run(t, call{"ADD", "c1", "0.2.0", ""})
	var old struct {
		IP4 struct {
			IP      string
			Gateway string
			Routes  []struct{ Dst, GW string }
		}
	}
	if !ok || json.Unmarshal([]byte(out), &old) != nil || old.IP4.IP != "10.15.20.2/24" ||
		old.IP4.Gateway != "10.15.20.1" || len(old.IP4.Routes) != 2 {
		t.Fatalf("ADD (0.2.0) = %s", out)
	}
	// Spec 1.1.0, another container, then the same one again (idempotent).
	first, ok := p.run(t, call{"ADD", "c2", "1.1.0", ""})
	var cur struct {
		CNIVersion string
		IPs        []struct{ Address, Gateway string }
	}
	if !ok || json.Unmarshal([]byte(first), &cur) != nil || cur.CNIVersion != "1.1.0" ||
		len(cur.IPs) != 1 || cur.IPs[0].Address != "10.15.20.3/24" || cur.IPs[0].Gateway != "10.15.20.1" {
		t.Fatalf("ADD (1.1.0) = %s", first)
	}
	if again, ok := p.run(t, call{"ADD", "c2", "1.1.0", ""}); !ok || again != first {
		t.Errorf("repeated ADD = %s, want %s", again, first)
	}
	if out, ok := p.run(t, call{"CHECK", "c2", "1.1.0", ""}); !ok {
		t.Errorf("CHECK of a held address failed: %s", out)
	}
	if out, ok := p.run(t, call{"DEL", "c2", "1.1.0", ""}); !ok {
		t.Errorf("DEL failed: %s", out)
	}
	if out, ok := p.run(t, call{"DEL", "c2", "1.1.0", ""}); !ok {
		t.Errorf("second DEL failed: %s", out)
	}
	wantError(t, p, call{"CHECK", "c2", "1.1.0", ""}, 3)
	if out, ok := p.run(t, call{"STATUS", "", "1.1.0", ""}); !ok {
		t.Errorf("STATUS failed: %s", out)
	}
	// GC keeping nobody releases c1.
	if out, ok := p.run(t, call{"GC", "", "1.1.0", `"cni.dev/valid-attachments":[],`}); !ok {
		t.Errorf("GC failed: %s", out)
	}
	wantError(t, p, call{"CHECK", "c1", "1.1.0", ""}, 3)
	wantError(t, p, call{"ADD", "c3", "1.1.0", `"args":{"cni":{"ips":["10.99.0.1"]}},`}, 101)
	entries, err := os.ReadDir(filepath.Join(p.dataDir, "e2e"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "lock" && e.Name() != "boot_id" && e.Name() != "owners" && !strings.HasPrefix(e.Name(), "last_reserved.") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// wantError runs a command that must fail and checks the printed CNI code.
func wantError(t *testing.T, p *plugin, c call, code uint) {
	t.Helper()
	out, ok := p.run(t, c)
	var e struct {
		Code uint
		Msg  string
	}
	if ok || json.Unmarshal([]byte(out), &e) != nil || e.Code != code || e.Msg == "" {
		t.Errorf("%s %s: ok=%v output %s, want error code %d", c.command, c.container, ok, out, code)
	}
}

func TestPluginRefusesBadConfig(t *testing.T) {
	p := buildPlugin(t)
	cmd := exec.Command(p.bin)
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0","name":"e2e","ipam":{"type":"pier-ipam","subnet":"10.0.0.0/31"}}`)
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=/x", "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent"}
	out, err := cmd.Output()
	var e struct{ Code uint }
	if err == nil || json.Unmarshal(out, &e) != nil || e.Code != 7 || !bytes.Contains(out, []byte("/31")) {
		t.Errorf("ADD with a /31: err %v, output %s; want code 7 naming the subnet", err, out)
	}
}
