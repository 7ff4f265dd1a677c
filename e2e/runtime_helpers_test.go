package e2e

// Real container runtimes end to end: podman (CNI backend) and containerd's
// CRI plugin driven by crictl call the built `pier` with a Pier conflist.
//
// Isolation. Each runtime runs on a runtimeHost: a testnet node namespace,
// plus a private mount namespace and a PID namespace of its own, whose init
// is a shell started from the test (born in the node namespace with
// testnet.StartIn). Every runtime command enters all three with nsenter.
//
//   - Network: the runtime, the CNI plugins it execs and the containers'
//     veths, bridge and nftables table live in the node namespace; the
//     containers' namespaces are made by the runtime and die with it.
//   - Mounts: the init mounts (privately, never propagated to the host) a
//     fresh /proc, a tmpfs on /run and /dev/shm — runc's and crun's state,
//     the shims' sockets under /run/containerd, the runtimes' network
//     namespace files in /run/netns, podman's shared-memory locks — and
//     directories of the test's temp dir on /etc/cni and /var/lib, so the
//     host's are never read or written. /var/lib because libcni keeps its
//     result cache in /var/lib/cni, configurable in neither runtime, and that
//     directory need not exist on the host to be mounted over. All other
//     state is under the test's temp dir by configuration
//     (testdata/runtimes).
//   - Processes: everything a runtime starts (conmon, shims, containers)
//     stays in the PID namespace, so killing its init — one PID, the test's
//     own child — makes the kernel kill all of them. The init also exits when
//     the test process dies, because it reads a pipe the test holds open.
//   - Cgroups: containers need real cgroups; they go under a parent of the
//     test's own (/pier-e2e-<random>), removed at the end.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/testnet"
)

const (
	// runtimeImage is the containers' image, pauseImage containerd's
	// sandbox image: the same busybox layer, built locally (no registry).
	runtimeImage = "localhost/pier-busybox:e2e"
	pauseImage   = "localhost/pier-pause:e2e"
	// runtimeCmdTimeout bounds each runtime command.
	runtimeCmdTimeout = 90 * time.Second
)

// requireRuntimeTools returns the paths of the named programs, or skips the
// test naming the missing ones. With PIER_REQUIRE_RUNTIMES=1 (set by
// .ci/run) a missing program fails the test instead: CI installs them all.
// A name may be NAME=ENVVAR, meaning: the path in $ENVVAR, else NAME in PATH.
func requireRuntimeTools(t *testing.T, names ...string) map[string]string {
	t.Helper()
	testnet.RequireRoot(t)
	paths := map[string]string{}
	var missing []string
	for _, n := range names {
		name, envVar, _ := strings.Cut(n, "=")
		if p := os.Getenv(envVar); envVar != "" && p != "" {
			if _, err := os.Stat(p); err != nil {
				missing = append(missing, fmt.Sprintf("%s ($%s=%s: %v)", name, envVar, p, err))
				continue
			}
			paths[name] = p
			continue
		}
		p, err := exec.LookPath(name)
		switch {
		case err == nil:
			paths[name] = p
		case envVar != "":
			missing = append(missing, fmt.Sprintf("%s (in $%s or PATH)", name, envVar))
		default:
			missing = append(missing, name)
		}
	}
	bb, err := staticBusybox()
	if err != nil {
		missing = append(missing, "a static busybox (Debian: busybox-static): "+err.Error())
	}
	paths["busybox"] = bb
	if len(missing) > 0 {
		msg := "needs " + strings.Join(missing, ", ")
		if os.Getenv("PIER_REQUIRE_RUNTIMES") == "1" {
			t.Fatal(msg + " (PIER_REQUIRE_RUNTIMES=1)")
		}
		t.Skip(msg)
	}
	return paths
}

// staticBusybox finds a busybox binary that runs in an empty image: one
// with no ELF interpreter.
func staticBusybox() (string, error) {
	p := "/bin/busybox"
	if _, err := os.Stat(p); err != nil {
		if p, err = exec.LookPath("busybox"); err != nil {
			return "", err
		}
	}
	f, err := elf.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked", p)
		}
	}
	return p, nil
}

// runtimeHost is a node namespace with a private mount and PID namespace
// in which one container runtime runs (see the file comment).
type runtimeHost struct {
	t            *testing.T
	sb           *testnet.Sandbox
	dir          string // the runtime's state: t.TempDir()
	cniBinDir    string // pier, pier-ipam, loopback
	cniConfDir   string
	cgroupParent string // "/pier-e2e-<random>"
	env          []string
	init         *exec.Cmd
	initPipe     *os.File    // held open: the init exits when it closes
	background   []*exec.Cmd // long-running commands (containerd)
	logs         []*os.File  // their output
	cgroupRoots  []string    // cgroup mount points, for the cleanup
	failureLogs  []func() string
}

// newRuntimeHost builds the sandbox and starts the namespaces' init; the
// cleanup kills everything started in them and removes the sandbox.
func newRuntimeHost(t *testing.T) *runtimeHost {
	t.Helper()
	dir := t.TempDir()
	for _, hidden := range []string{"/run/", "/var/run/", "/var/lib/", "/dev/shm/", "/etc/cni/"} {
		if strings.HasPrefix(dir+"/", hidden) {
			t.Fatalf("temp dir %s is under %s, which the runtime's mount namespace replaces; set TMPDIR elsewhere", dir, hidden)
		}
	}
	rt := &runtimeHost{
		t:            t,
		sb:           testnet.New(t),
		dir:          dir,
		cniBinDir:    filepath.Join(dir, "cni-bin"),
		cniConfDir:   filepath.Join(dir, "cni-conf"),
		cgroupParent: "/" + testnet.UniqueName("pier-e2e-"),
		env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"HOME=" + filepath.Join(dir, "home"),
			"TMPDIR=" + filepath.Join(dir, "tmp"),
		},
	}
	for _, d := range []string{rt.cniBinDir, rt.cniConfDir, "home", "tmp", "varlib/cni", "etccni"} {
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := testnet.Binaries(t)
	links := map[string]string{
		"pier":      filepath.Join(bin, "pier"),
		"pier-ipam": filepath.Join(bin, "pier-ipam"),
		// containerd always adds a loopback network first.
		"loopback": "/usr/lib/cni/loopback",
	}
	for name, target := range links {
		if _, err := os.Stat(target); err != nil {
			t.Fatalf("CNI plugin %s: %v", name, err)
		}
		if err := os.Symlink(target, filepath.Join(rt.cniBinDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	rt.cgroupRoots = cgroupMounts(t)
	rt.startInit()
	t.Cleanup(rt.stop)
	return rt
}

// initScript runs as PID 1 of the runtime's PID namespace, in its own mount
// namespace; $1 is the test's temp dir. It makes the mounts private first,
// so that nothing it mounts propagates to the host.
const initScript = `set -e
mount --make-rprivate /
mount -t proc proc /proc
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount --bind "$1/varlib" /var/lib
if [ -d /etc/cni ]; then mount --bind "$1/etccni" /etc/cni; fi
echo ready
read -r _ || true
`

func (rt *runtimeHost) startInit() {
	t := rt.t
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", initScript, "sh", rt.dir)
	cmd.Env = rt.env
	cmd.Stdin = r
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID}
	if err := testnet.StartIn(rt.sb.Node.Path, cmd); err != nil {
		r.Close()
		w.Close()
		t.Fatalf("start the runtime namespaces' init: %v", err)
	}
	r.Close()
	rt.init, rt.initPipe = cmd, w
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) == "ready" {
			return
		}
	case <-time.After(30 * time.Second):
	}
	rt.killInit()
	t.Fatalf("the runtime namespaces' init did not get ready: %s", stderr.String())
}

// killInit kills the PID namespace's init, and so every process in it, and
// waits for it.
func (rt *runtimeHost) killInit() {
	if rt.init == nil {
		return
	}
	_ = rt.init.Process.Kill()
	_ = rt.init.Wait()
	rt.initPipe.Close()
	rt.init = nil
}

// stop is the cleanup: the runtime tests' own teardown has run by now (a
// cleanup registered later runs earlier). Kill the PID namespace — the
// kernel kills all its processes before its init is reaped — then reap the
// nsenter processes whose children those were, and remove the cgroups.
func (rt *runtimeHost) stop() {
	if rt.t.Failed() {
		for _, f := range rt.failureLogs {
			rt.t.Log(f())
		}
	}
	rt.killInit()
	for _, c := range rt.background {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			rt.t.Errorf("%s did not exit after its PID namespace was killed", c.Path)
		}
	}
	for _, f := range rt.logs {
		f.Close()
	}
	rt.removeCgroups()
}

// cgroupMounts lists the mount points of the cgroup hierarchies (v1, v2 or
// both), read from /proc/self/mountinfo.
func cgroupMounts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var roots []string
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, fsType := strings.Fields(pre), strings.Fields(post)
		if len(f) > 4 && len(fsType) > 0 && (fsType[0] == "cgroup" || fsType[0] == "cgroup2") {
			roots = append(roots, f[4])
		}
	}
	return roots
}

// removeCgroups removes the test's cgroup parent, deepest first, in every
// hierarchy. The processes are gone by now; their cgroups may take a moment
// to empty.
func (rt *runtimeHost) removeCgroups() {
	for _, root := range rt.cgroupRoots {
		top := filepath.Join(root, rt.cgroupParent)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			var err error
			for range 50 {
				if err = os.Remove(d); err == nil || errors.Is(err, fs.ErrNotExist) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				rt.t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
	}
}

// command returns argv as a command entering the runtime's namespaces, with
// the host's environment replaced by rt.env plus env.
func (rt *runtimeHost) command(ctx context.Context, env []string, argv ...string) *exec.Cmd {
	pid := fmt.Sprint(rt.init.Process.Pid)
	args := append([]string{"--target", pid, "--mount", "--net", "--pid", "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = append(slices.Clone(rt.env), env...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// exec runs argv in the runtime's namespaces and returns its stdout; the
// error carries stderr.
func (rt *runtimeHost) exec(env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), runtimeCmdTimeout)
	defer cancel()
	cmd := rt.command(ctx, env, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\nstdout: %s\nstderr: %s", strings.Join(argv, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// startBackground starts a long-running argv in the runtime's namespaces,
// its output to logName in the temp dir (logged if the test fails). It is
// killed with the PID namespace.
func (rt *runtimeHost) startBackground(env []string, logName string, argv ...string) {
	t := rt.t
	t.Helper()
	logPath := filepath.Join(rt.dir, logName)
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	rt.logs = append(rt.logs, f)
	cmd := rt.command(context.Background(), env, argv...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", argv[0], err)
	}
	rt.background = append(rt.background, cmd)
	rt.logOnFailure(logPath)
}

// logOnFailure logs the tail of a file of the temp dir if the test fails.
func (rt *runtimeHost) logOnFailure(path string) {
	rt.failureLogs = append(rt.failureLogs, func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Sprintf("%s: %v", path, err)
		}
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		return fmt.Sprintf("--- %s (tail):\n%s", path, b)
	})
}

// renderRuntimeConf fills the template testdata/runtimes/<name> with data
// and writes it to dst.
func renderRuntimeConf(t *testing.T, name, dst string, data any) string {
	t.Helper()
	tmpl, err := template.New(filepath.Base(name)).Option("missingkey=error").ParseFiles(filepath.Join("testdata", "runtimes", name))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		t.Fatalf("render %s: %v", name, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// pierNetwork is the Pier conflist a runtime uses.
type pierNetwork struct {
	Name, Bridge, Subnet, DataDir string
	conflist                      string
}

// network writes the Pier conflist (pier, ipMasq, a /24, IPAM state in the
// temp dir) into the runtime's CNI config dir.
func (rt *runtimeHost) network(name, bridge, subnet string) *pierNetwork {
	n := &pierNetwork{Name: name, Bridge: bridge, Subnet: subnet, DataDir: filepath.Join(rt.dir, "pier-ipam")}
	n.conflist = renderRuntimeConf(rt.t, "pier.conflist", filepath.Join(rt.cniConfDir, "10-"+name+".conflist"), n)
	return n
}

// pluginConf is the conflist's pier plugin as one network config, the way
// libcni hands it to the plugin, for reading Pier's store.
func (n *pierNetwork) pluginConf(t *testing.T) string {
	t.Helper()
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(n.conflist), &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("conflist: %v\n%s", err, n.conflist)
	}
	p := list.Plugins[0]
	p["name"], p["cniVersion"] = n.Name, list.CNIVersion
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkAttachment checks that the address a runtime reports for a
// container is the one Pier returned for it (in libcni's cache of the ADD's
// result, which the runtime keeps) and that Pier's store holds it for
// (containerID, eth0). It returns the address.
func (rt *runtimeHost) checkAttachment(t *testing.T, n *pierNetwork, containerID, reported string) netip.Addr {
	t.Helper()
	ip, err := netip.ParseAddr(reported)
	if err != nil {
		t.Fatalf("runtime reports address %q for %s: %v", reported, containerID, err)
	}
	if !netip.MustParsePrefix(n.Subnet).Contains(ip) {
		t.Fatalf("runtime reports %s for %s, outside %s", ip, containerID, n.Subnet)
	}
	cache := filepath.Join(rt.dir, "varlib", "cni", "results", n.Name+"-"+containerID+"-eth0")
	b, err := os.ReadFile(cache)
	if err != nil {
		t.Fatalf("libcni's cached result of the ADD: %v", err)
	}
	var cached struct {
		Result json.RawMessage `json:"result"`
	}
	var res current.Result
	if err := json.Unmarshal(b, &cached); err != nil {
		t.Fatalf("%s: %v", cache, err)
	}
	if err := json.Unmarshal(cached.Result, &res); err != nil {
		t.Fatalf("%s: result: %v", cache, err)
	}
	var fromPier []string
	for _, c := range res.IPs {
		if c.Interface != nil && *c.Interface < len(res.Interfaces) && res.Interfaces[*c.Interface].Sandbox != "" {
			fromPier = append(fromPier, c.Address.IP.String())
		}
	}
	if !slices.Equal(fromPier, []string{ip.String()}) {
		t.Fatalf("runtime reports %s for %s; pier's result holds %v:\n%s", ip, containerID, fromPier, cached.Result)
	}
	owner := config.Owner{ContainerID: containerID, IfName: "eth0"}
	held := false
	for _, r := range reservations(t, n.pluginConf(t)) {
		if r.Owner == owner {
			if r.Addr != ip {
				t.Fatalf("Pier's store holds %s for %s, the runtime reports %s", r.Addr, owner, ip)
			}
			held = true
		}
	}
	if !held {
		t.Fatalf("Pier's store holds nothing for %s", owner)
	}
	t.Logf("%.12s: the runtime reports %s, as Pier's result and store hold", containerID, ip)
	return ip
}

// checkNothingLeft checks the node after the runtime removed every
// container: no veth, no reservation, no masquerade element, libcni's cache
// of the network empty, and no network namespace file left by the runtime.
func (rt *runtimeHost) checkNothingLeft(t *testing.T, n *pierNetwork) {
	t.Helper()
	assertNothingLeft(t, &node{t: t, sb: rt.sb, dataDir: n.DataDir}, n.pluginConf(t), n.Bridge, n.Name+"-masq4")
	cached, _ := filepath.Glob(filepath.Join(rt.dir, "varlib", "cni", "results", n.Name+"-*"))
	if len(cached) != 0 {
		t.Errorf("libcni still caches results for %v", cached)
	}
	out, err := rt.exec(nil, "find", "/run/netns", "-mindepth", "1")
	if err != nil && !strings.Contains(err.Error(), "No such file") {
		t.Fatal(err)
	}
	if left := strings.Fields(out); len(left) != 0 {
		t.Errorf("the runtime left network namespaces: %v", left)
	}
}

// checkContainerNet checks, from inside a container (through the runtime's
// exec), that eth0 holds ip in the network's subnet and that the container
// reaches peer through the bridge.
func checkContainerNet(t *testing.T, n *pierNetwork, execIn func(argv ...string) (string, error), name string, ip, peer netip.Addr) {
	t.Helper()
	out, err := execIn("ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	want := fmt.Sprintf("inet %s/%d ", ip, netip.MustParsePrefix(n.Subnet).Bits())
	if !strings.Contains(out, want) {
		t.Fatalf("%s: eth0 lacks %q:\n%s", name, want, out)
	}
	if out, err := execIn("ping", "-c", "2", "-w", "10", peer.String()); err != nil {
		t.Fatalf("%s cannot ping %s: %v\n%s", name, peer, err, out)
	}
	t.Logf("%s: eth0 holds %s; pings %s", name, ip, peer)
}

// buildImage writes an OCI image archive holding one layer — a static
// busybox with the applets the tests use, sleeping by default, so that it
// also serves as containerd's sandbox image — under each of refs.
func buildImage(t *testing.T, busybox, dst string, refs ...string) {
	t.Helper()
	layer := busyboxLayer(t, busybox)
	layerDigest := blobDigest(layer)
	imgConfig := imageJSON(t, map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Env": []string{"PATH=/bin"},
			"Cmd": []string{"/bin/sleep", "86400"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	manifest := imageJSON(t, map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        ociDescriptor("application/vnd.oci.image.config.v1+json", imgConfig),
		"layers":        []any{ociDescriptor("application/vnd.oci.image.layer.v1.tar", layer)},
	})
	var manifests []any
	for _, ref := range refs {
		d := ociDescriptor("application/vnd.oci.image.manifest.v1+json", manifest)
		d["annotations"] = map[string]string{
			"io.containerd.image.name":          ref,
			"org.opencontainers.image.ref.name": ref,
		}
		manifests = append(manifests, d)
	}
	index := imageJSON(t, map[string]any{"schemaVersion": 2, "manifests": manifests})

	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(layer), layer},
		{blobPath(imgConfig), imgConfig},
		{blobPath(manifest), manifest},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		tarAdd(t, tw, &tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	for _, f := range files {
		tarAdd(t, tw, &tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data))}, f.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// busyboxLayer is an uncompressed layer: /bin/busybox, its applet links, a
// root user, and the directories the runtimes mount onto.
func busyboxLayer(t *testing.T, busybox string) []byte {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, d := range []string{"bin/", "dev/", "etc/", "proc/", "root/", "run/", "sys/", "tmp/"} {
		tarAdd(t, tw, &tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	tarAdd(t, tw, &tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))}, bb)
	for _, applet := range []string{"sh", "sleep", "ping", "ip", "cat"} {
		tarAdd(t, tw, &tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	for name, data := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
	} {
		tarAdd(t, tw, &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}, []byte(data))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func tarAdd(t *testing.T, tw *tar.Writer, h *tar.Header, data []byte) {
	t.Helper()
	h.ModTime = time.Unix(0, 0)
	if err := tw.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
}

func imageJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func blobDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func ociDescriptor(mediaType string, blob []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": blobDigest(blob), "size": len(blob)}
}

func blobPath(blob []byte) string {
	return "blobs/sha256/" + strings.TrimPrefix(blobDigest(blob), "sha256:")
}

// retryUntil retries f every 200 ms until it succeeds or d passes, and
// returns its last error.
func retryUntil(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
