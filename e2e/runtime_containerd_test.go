package e2e

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cri drives containerd's CRI plugin with crictl, the way the kubelet
// does, against a containerd of the test's own.
type cri struct {
	rt     *runtimeHost
	dir    string
	crictl []string // crictl with its config
	ctr    []string // ctr on the same socket, k8s.io namespace (CRI's)
}

// startContainerd starts containerd (config testdata/runtimes/containerd)
// in the runtimeHost and waits until the CRI plugin answers.
func startContainerd(t *testing.T, rt *runtimeHost, crictlPath string) *cri {
	t.Helper()
	dir := filepath.Join(rt.dir, "containerd")
	data := map[string]string{
		"Dir":        dir,
		"CNIConfDir": rt.cniConfDir,
		"CNIBinDir":  rt.cniBinDir,
		"PauseImage": pauseImage,
	}
	conf := filepath.Join(dir, "config.toml")
	crictlConf := filepath.Join(dir, "crictl.yaml")
	renderRuntimeConf(t, "containerd/config.toml", conf, data)
	renderRuntimeConf(t, "containerd/crictl.yaml", crictlConf, data)
	c := &cri{
		rt:     rt,
		dir:    dir,
		crictl: []string{crictlPath, "--config", crictlConf},
		ctr:    []string{"ctr", "--address", filepath.Join(dir, "containerd.sock"), "--namespace", "k8s.io"},
	}
	rt.startBackground(nil, "containerd.log", "containerd", "--config", conf)
	err := retryUntil(30*time.Second, func() error {
		_, err := c.run("version")
		return err
	})
	if err != nil {
		t.Fatalf("containerd's CRI plugin does not answer: %v", err)
	}
	return c
}

func (c *cri) run(args ...string) (string, error) {
	return c.rt.exec(nil, append(c.crictl, args...)...)
}

func (c *cri) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// importImage imports the OCI archive into CRI's namespace and waits until
// the CRI plugin lists it, so that nothing is ever pulled.
func (c *cri) importImage(t *testing.T, archive string, refs ...string) {
	t.Helper()
	if _, err := c.rt.exec(nil, append(c.ctr, "images", "import", archive)...); err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		err := retryUntil(30*time.Second, func() error {
			_, err := c.run("inspecti", ref)
			return err
		})
		if err != nil {
			t.Fatalf("CRI does not see image %s: %v", ref, err)
		}
	}
}

// criPod is a pod sandbox with one busybox container.
type criPod struct {
	name, id, container string
}

// runPod runs a pod sandbox (its network set up by CNI: loopback, then the
// Pier conflist) and starts a busybox container in it.
func (c *cri) runPod(t *testing.T, name string) criPod {
	t.Helper()
	data := map[string]string{
		"Name":         name,
		"LogDir":       filepath.Join(c.dir, "logs", name),
		"CgroupParent": c.rt.cgroupParent,
		"Image":        runtimeImage,
	}
	podConf := filepath.Join(c.dir, name+"-pod.json")
	ctrConf := filepath.Join(c.dir, name+"-container.json")
	renderRuntimeConf(t, "containerd/pod.json", podConf, data)
	renderRuntimeConf(t, "containerd/container.json", ctrConf, data)
	p := criPod{name: name}
	p.id = c.mustRun(t, "runp", podConf)
	p.container = c.mustRun(t, "create", "--no-pull", p.id, ctrConf, podConf)
	c.mustRun(t, "start", p.container)
	return p
}

// TestRuntimeContainerd: containerd's CRI plugin, driven by crictl, runs two
// pods on a Pier network; each gets its address from Pier, CRI reports that
// address, busybox containers in the pods ping each other, and stopping and
// removing the pods leaves nothing behind. containerd DELs twice — at stopp
// and again at rmp, with CNI_NETNS empty — and adds a loopback network of
// its own before Pier's.
func TestRuntimeContainerd(t *testing.T) {
	tools := requireRuntimeTools(t, "containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl=PIER_CRICTL", "nsenter", "nft")
	rt := newRuntimeHost(t)
	n := rt.network("pier-cri", "pier-cri0", "10.202.0.0/24")
	c := startContainerd(t, rt, tools["crictl"])

	archive := filepath.Join(rt.dir, "image.tar")
	buildImage(t, tools["busybox"], archive, runtimeImage, pauseImage)
	c.importImage(t, archive, runtimeImage, pauseImage)
	// Runs before the runtimeHost's cleanup: a failed test's pods are
	// removed through CRI (so through pier's DEL) before the kill.
	t.Cleanup(func() { _, _ = c.run("rmp", "--all", "--force") })

	pods := []criPod{c.runPod(t, "pier-a"), c.runPod(t, "pier-b")}
	ips := make([]netip.Addr, len(pods))
	for i, p := range pods {
		var insp struct {
			Status struct {
				State   string `json:"state"`
				Network struct {
					IP            string `json:"ip"`
					AdditionalIPs []struct {
						IP string `json:"ip"`
					} `json:"additionalIps"`
				} `json:"network"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(c.mustRun(t, "inspectp", "--output", "json", p.id)), &insp); err != nil {
			t.Fatalf("crictl inspectp %s: %v", p.name, err)
		}
		if insp.Status.State != "SANDBOX_READY" || len(insp.Status.Network.AdditionalIPs) != 0 {
			t.Fatalf("pod %s: %+v", p.name, insp.Status)
		}
		// CNI_CONTAINERID is the sandbox's ID.
		ips[i] = rt.checkAttachment(t, n, p.id, insp.Status.Network.IP)
	}
	if ips[0] == ips[1] {
		t.Fatalf("both pods got %s", ips[0])
	}
	for i, p := range pods {
		execIn := func(argv ...string) (string, error) {
			return c.run(append([]string{"exec", p.container}, argv...)...)
		}
		checkContainerNet(t, n, execIn, p.name, ips[i], ips[1-i])
	}

	for _, p := range pods {
		c.mustRun(t, "stopp", p.id)
		c.mustRun(t, "rmp", p.id)
	}
	if out := c.mustRun(t, "pods", "--quiet"); out != "" {
		t.Fatalf("pods left after rmp: %s", out)
	}
	rt.checkNothingLeft(t, n)
}
