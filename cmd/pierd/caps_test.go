package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/pier-cni/pier/internal/localnet"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/testnet"
)

// manifestPierd is what the Kubernetes manifest gives pierd's container:
// the capabilities it adds to none, where it mounts the host's
// /proc/sys/net, and its --proc-sys.
type manifestPierd struct {
	caps    []string
	netSys  string // mount path of hostPath /proc/sys/net, "" when none
	procSys string
}

func readManifestPierd(t *testing.T) manifestPierd {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/kubernetes/pier-kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m manifestPierd
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal([]byte(doc), &ds); err != nil || ds.Kind != "DaemonSet" {
			continue
		}
		spec := ds.Spec.Template.Spec
		c := spec.Containers[0]
		if sc := c.SecurityContext; sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Fatalf("pierd's container does not drop every capability first: %+v", sc)
		} else {
			for _, cp := range sc.Capabilities.Add {
				m.caps = append(m.caps, strings.ToLower(string(cp)))
			}
		}
		m.procSys = "/proc/sys"
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--proc-sys="); ok {
				m.procSys = v
			}
		}
		for _, v := range spec.Volumes {
			if v.HostPath == nil || v.HostPath.Path != "/proc/sys/net" {
				continue
			}
			for _, vm := range c.VolumeMounts {
				if vm.Name == v.Name && !vm.ReadOnly {
					m.netSys = vm.MountPath
				}
			}
		}
	}
	if m.caps == nil {
		t.Fatal("no pierd container with capabilities in the manifest")
	}
	return m
}

// TestManifestCapabilities guards what the Kubernetes manifest lets pierd
// do. In its container, with only the capabilities the manifest adds and
// /proc/sys read-only (as a container runtime mounts it), pierd must be
// able to load the localnet guard's eBPF program onto a bridge (it puts
// the guard back after a flush: with NET_ADMIN alone the kernel answers
// EPERM) and to turn bridge-nf-call-iptables on through the mount the
// manifest gives it (network policy needs it), and its start checks must
// find nothing missing. With NET_ADMIN alone and no such mount, the start
// checks must say both. The child runs in a node namespace of the test's
// and a mount namespace of its own, which go when it exits.
func TestManifestCapabilities(t *testing.T) {
	testnet.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	m := readManifestPierd(t)
	if m.netSys == "" || filepath.Clean(m.procSys+"/net") != filepath.Clean(m.netSys) {
		t.Errorf("the manifest mounts the host's /proc/sys/net at %q, and pierd looks under %q", m.netSys, m.procSys)
	}
	out := runCapsChild(t, m.caps, m.netSys, m.procSys, "ok")
	t.Logf("with %v:\n%s", m.caps, out)
	out = runCapsChild(t, []string{"net_admin"}, "", "/proc/sys", "problems")
	t.Logf("with NET_ADMIN alone:\n%s", out)
}

// runCapsChild runs TestCapsChild in a new node namespace under caps, with
// /proc/sys read-only and the node's /proc/sys/net mounted, writable, at
// netSys (when set) under a temp root; procSys is pierd's --proc-sys
// there. It fails the test when the child does.
func runCapsChild(t *testing.T, caps []string, netSys, procSys, expect string) string {
	t.Helper()
	sb := testnet.New(t)
	sb.Node.MustRun(t, "ip", "link", "add", "pier-caps0", "type", "bridge")
	sb.Node.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
	root := t.TempDir()
	mounts := ""
	if netSys != "" {
		dir := filepath.Join(root, netSys)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mounts = fmt.Sprintf("mount --bind /proc/sys/net %q && ", dir)
	}
	if procSys != "/proc/sys" {
		procSys = filepath.Join(root, procSys)
	}
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + c
	}
	script := mounts + "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && " +
		fmt.Sprintf("exec setpriv --bounding-set=%s -- %q -test.run=^TestCapsChild$ -test.v", bounding, os.Args[0])
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "PIER_CAPS_CHILD="+expect, "PIER_CAPS_PROC_SYS="+procSys, "PIER_CAPS_BRIDGE=pier-caps0")
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := testnet.StartIn(sb.Node.Path, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(buf.String(), "--- PASS: TestCapsChild") {
		t.Fatalf("child with %v (expecting %s): %v\n%s", caps, expect, err, buf.String())
	}
	return buf.String()
}

// TestCapsChild is TestManifestCapabilities's child (it skips otherwise).
func TestCapsChild(t *testing.T) {
	expect, procSys, bridge := os.Getenv("PIER_CAPS_CHILD"), os.Getenv("PIER_CAPS_PROC_SYS"), os.Getenv("PIER_CAPS_BRIDGE")
	if expect == "" {
		t.Skip("run by TestManifestCapabilities")
	}
	if os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) == nil {
		t.Fatal("setup: /proc/sys is writable, as in no container")
	}
	problems := preflight(procSys)
	t.Logf("start checks: %q", problems)
	guard := localnet.Ensure(bridge)
	netfilter := dataplane.EnableBridgeNetfilter(procSys)
	switch expect {
	case "ok":
		if len(problems) > 0 {
			t.Errorf("pierd reports it cannot: %q", problems)
		}
		if guard != nil {
			t.Errorf("the localnet guard: %v", guard)
		}
		if netfilter != nil {
			t.Errorf("bridge-nf-call-iptables: %v", netfilter)
		}
		if on, err := localnet.Present(bridge); err != nil || !on {
			t.Errorf("no guard on %s after Ensure: %v", bridge, err)
		}
	case "problems":
		joined := strings.Join(problems, "\n")
		for _, want := range []string{"load the localnet guard's eBPF program: operation not permitted", "write sysctls under /proc/sys: read-only file system"} {
			if !strings.Contains(joined, want) {
				t.Errorf("the start checks do not say %q: %q", want, problems)
			}
		}
		if guard == nil || netfilter == nil {
			t.Errorf("the guard (%v) and the sysctl (%v) should both fail here", guard, netfilter)
		}
	}
}
