package kubebench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/testnet"
)

// FlannelVersion is the anchor measured against.
const FlannelVersion = "v0.28.10"

// buildFlanneld builds flanneld FlannelVersion from the Go module proxy
// into bin/tools/ (once; later runs reuse it). Its main package imports
// every backend, and the tencentvpc backend's dependency is not served
// here: the build takes flannel's main.go from the module cache without
// that one import, in a throwaway module, with cgo on as flannel builds it.
func buildFlanneld(t *testing.T) string {
	t.Helper()
	root := kubetest.ModuleRoot(t)
	bin := filepath.Join(root, "bin", "tools", "flanneld-"+FlannelVersion)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	dir := t.TempDir()
	out, err := exec.Command("go", "mod", "download", "-json", "github.com/flannel-io/flannel@"+FlannelVersion).Output()
	if err != nil {
		t.Fatalf("download flannel: %v", err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(mod.Dir, "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(string(src), "\n") {
		if !strings.Contains(line, "pkg/backend/tencentvpc") {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := [][]string{
		{"go", "mod", "init", "flanneld-build"},
		{"go", "mod", "edit", "-require=github.com/flannel-io/flannel@" + FlannelVersion},
		{"go", "mod", "tidy"},
		{"go", "build", "-trimpath", "-o", bin, "."},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	return bin
}

// flannelCNIPath builds the stand-in for flannel's CNI plugin (flannelcni)
// and returns a CNI_PATH with it and the reference plugins it delegates to.
func flannelCNIPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "flannel"), "./flannelcni")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the flannel CNI stand-in: %v\n%s", err, out)
	}
	return dir + ":/usr/lib/cni"
}

// flannelNode is a node namespace running flanneld.
type flannelNode struct {
	*kubetest.Node
	dir     string
	cniPath string
	conf    string // the CNI config the runtime would hand flannel's plugin
	cmd     *exec.Cmd
	log     *os.File
}

// flannelSetup is how flannel runs in a benchmark: the flanneld binary,
// its backend (vxlan or host-gw) and the CNI_PATH of its plugin chain.
type flannelSetup struct {
	flanneld, backend, cniPath string
}

// startFlannel starts flanneld on n (its Node must have a pod range), with
// the kube subnet manager, the setup's backend, masquerade, and its files
// in the node's temp dir.
func startFlannel(t *testing.T, e *kubetest.Env, n *kubetest.Node, fs flannelSetup) *flannelNode {
	t.Helper()
	flanneld, backend, cniPath := fs.flanneld, fs.backend, fs.cniPath
	f := &flannelNode{Node: n, dir: filepath.Join(n.Dir, "flannel"), cniPath: cniPath}
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	netConf := fmt.Sprintf(`{"Network": %q, "Backend": {"Type": %q}}`, flannelCIDR, backend)
	if err := os.WriteFile(filepath.Join(f.dir, "net-conf.json"), []byte(netConf), 0o644); err != nil {
		t.Fatal(err)
	}
	f.conf = fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "flannel-bench", "type": "flannel", "subnetFile": %q, "dataDir": %q, "ipamDataDir": %q}`,
		filepath.Join(f.dir, "subnet.env"), filepath.Join(f.dir, "cni"), filepath.Join(f.dir, "ipam"))
	log, err := os.Create(filepath.Join(f.dir, "flanneld.log"))
	if err != nil {
		t.Fatal(err)
	}
	f.log = log
	f.cmd = exec.Command(flanneld, "--kube-subnet-mgr", "--kubeconfig-file", e.API.Kubeconfig(t, "admin"),
		"--iface", "ul0", "--ip-masq", "--subnet-file", filepath.Join(f.dir, "subnet.env"),
		"--net-config-path", filepath.Join(f.dir, "net-conf.json"))
	f.cmd.Env = append(os.Environ(), "NODE_NAME="+n.Name)
	f.cmd.Stdout, f.cmd.Stderr = log, log
	if err := testnet.StartIn(n.SB.Node.Path, f.cmd); err != nil {
		t.Fatalf("start flanneld: %v", err)
	}
	t.Cleanup(f.stop)
	return f
}

func (f *flannelNode) stop() {
	if f.cmd == nil {
		return
	}
	_ = f.cmd.Process.Kill() // our own child, by PID
	_ = f.cmd.Wait()
	f.cmd = nil
	f.log.Close()
}

func (f *flannelNode) logTail() string {
	b, _ := os.ReadFile(filepath.Join(f.dir, "flanneld.log"))
	return kubetest.Tail(string(b), 6000)
}

// exec runs flannel's CNI chain (the stand-in, bridge, host-local) for
// the attachment, as a runtime would: one process from the node
// namespace's first instruction.
func (f *flannelNode) exec(verb string, ns *testnet.NS, id string) (testnet.PluginRun, error) {
	netns := ""
	if ns != nil {
		netns = ns.Path
	}
	env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + f.cniPath}
	cmd, err := f.SB.Start(strings.SplitN(f.cniPath, ":", 2)[0]+"/flannel", env, []byte(f.conf))
	if err != nil {
		return testnet.PluginRun{}, err
	}
	return testnet.Outcome(cmd, cmd.Wait()), nil
}
