package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// podman drives Debian's podman 4.3 (CNI network backend), rootful, with
// all its state in the runtimeHost's temp dir.
type podman struct {
	rt   *runtimeHost
	env  []string
	args []string // global flags
}

// podmanRunRoot is podman's runroot: in the runtimeHost's own /run (a
// tmpfs of its mount namespace), because podman refuses a runroot over 50
// bytes, which a path in the temp dir may exceed.
const podmanRunRoot = "/run/pier-e2e/podman"

func newPodman(rt *runtimeHost, network string) *podman {
	t := rt.t
	nofile, nproc := podmanUlimits(t)
	data := map[string]string{
		"Dir":        filepath.Join(rt.dir, "podman"),
		"CNIConfDir": rt.cniConfDir,
		"CNIBinDir":  rt.cniBinDir,
		"Network":    network,
		"NoFile":     fmt.Sprint(nofile),
		"NProc":      fmt.Sprint(nproc),
		"RunRoot":    podmanRunRoot,
	}
	conf := filepath.Join(rt.dir, "podman", "containers.conf")
	storage := filepath.Join(rt.dir, "podman", "storage.conf")
	registries := filepath.Join(rt.dir, "podman", "registries.conf")
	renderRuntimeConf(t, "podman/containers.conf", conf, data)
	renderRuntimeConf(t, "podman/storage.conf", storage, data)
	renderRuntimeConf(t, "podman/registries.conf", registries, data)
	d := data["Dir"]
	return &podman{
		rt: rt,
		// Only these files: CONTAINERS_CONF replaces every containers.conf.
		env: []string{
			"CONTAINERS_CONF=" + conf,
			"CONTAINERS_STORAGE_CONF=" + storage,
			"CONTAINERS_REGISTRIES_CONF=" + registries,
		},
		args: []string{
			"podman",
			"--root", filepath.Join(d, "storage"),
			"--runroot", podmanRunRoot,
			"--tmpdir", filepath.Join(d, "tmp"),
			"--cgroup-manager", "cgroupfs",
			"--events-backend", "file",
		},
	}
}

// podmanUlimits returns the open-files and process limits podman runs
// with: the hard limits (which podman cannot raise without
// CAP_SYS_RESOURCE), the process limit capped at kernel.pid_max, as podman
// caps its own.
func podmanUlimits(t *testing.T) (nofile, nproc uint64) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	nofile = lim.Max
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
		t.Fatal(err)
	}
	nproc = lim.Max
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	if pidMax, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && pidMax < nproc {
		nproc = pidMax
	}
	return nofile, nproc
}

func (p *podman) run(args ...string) (string, error) {
	return p.rt.exec(p.env, append(p.args, args...)...)
}

func (p *podman) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := p.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// podmanInspect is what `podman container inspect` says of a container's
// network, which podman takes from the CNI result.
type podmanInspect struct {
	ID              string `json:"Id"`
	NetworkSettings struct {
		Networks map[string]struct {
			IPAddress   string
			IPPrefixLen int
			Gateway     string
		}
	}
}

// TestRuntimePodman: podman runs two containers on a Pier network; each gets
// its address from Pier, podman reports that address, the containers ping
// each other, and `podman rm -f` leaves nothing behind. Seen with Debian's
// podman 4.3.1: it hands pier the conflist's plugin config as written
// (adding name and cniVersion) and calls VERSION before ADD and DEL; its
// libcni takes cniVersion up to 1.0.0 — with 1.1.0 it rejects pier's result.
func TestRuntimePodman(t *testing.T) {
	tools := requireRuntimeTools(t, "podman", "conmon", "runc", "nsenter", "nft")
	rt := newRuntimeHost(t)
	n := rt.network("pier-podman", "pier-pm0", "10.201.0.0/24")
	pm := newPodman(rt, n.Name)

	archive := filepath.Join(rt.dir, "image.tar")
	// podman loads one image per OCI archive.
	buildImage(t, tools["busybox"], archive, runtimeImage)
	pm.mustRun(t, "load", "--input", archive)
	// Runs before the runtimeHost's cleanup: a failed test's containers are
	// removed through podman (so through pier's DEL) before the kill.
	t.Cleanup(func() { _, _ = pm.run("rm", "--all", "--force", "--time", "0") })

	names := []string{"pier-a", "pier-b"}
	ips := map[string]netip.Addr{}
	for _, name := range names {
		pm.mustRun(t, "run", "--detach", "--name", name, "--network", n.Name,
			"--cgroup-parent", rt.cgroupParent, runtimeImage)
		var insp []podmanInspect
		if err := json.Unmarshal([]byte(pm.mustRun(t, "container", "inspect", name)), &insp); err != nil || len(insp) != 1 {
			t.Fatalf("podman inspect %s: %v", name, err)
		}
		got, ok := insp[0].NetworkSettings.Networks[n.Name]
		if !ok {
			t.Fatalf("podman inspect %s: not on network %s: %+v", name, n.Name, insp[0].NetworkSettings)
		}
		ips[name] = rt.checkAttachment(t, n, insp[0].ID, got.IPAddress)
		if want := netip.MustParsePrefix(n.Subnet).Bits(); got.IPPrefixLen != want || got.Gateway != "10.201.0.1" {
			t.Fatalf("podman reports %s/%d via %s, want /%d via 10.201.0.1", got.IPAddress, got.IPPrefixLen, got.Gateway, want)
		}
	}
	if ips["pier-a"] == ips["pier-b"] {
		t.Fatalf("both containers got %s", ips["pier-a"])
	}
	for i, name := range names {
		peer := names[1-i]
		execIn := func(argv ...string) (string, error) {
			return pm.run(append([]string{"exec", name}, argv...)...)
		}
		checkContainerNet(t, n, execIn, name, ips[name], ips[peer])
	}

	pm.mustRun(t, "rm", "--force", "--time", "0", "pier-a", "pier-b")
	if out := pm.mustRun(t, "ps", "--all", "--quiet"); out != "" {
		t.Fatalf("containers left after rm: %s", out)
	}
	rt.checkNothingLeft(t, n)
}
