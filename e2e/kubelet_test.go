package e2e

// The whole chain on two nodes: a real kubelet (built by scripts/tools.sh)
// registered to the test's kube-apiserver runs a Pod through containerd's
// CRI, which calls the built pier with the conflist pierd wrote in
// Kubernetes mode. Each node is a runtimeHost (runtime_helpers_test.go: a
// node namespace with a private mount and PID namespace) joined to the
// underlay of kube_test.go. What kubelet would change on the host is kept
// inside: its state, logs and volume plugins in the test's temp dir
// (/var/log is a temp dir in the private mount namespace), the sysctls it
// would set read from files bound over their /proc/sys entries in that
// namespace's own /proc, its cgroups under the runtimeHost's cgroup parent
// (created first in every hierarchy, removed after).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/kubetest"
)

// kubeletNode is a node with pierd, containerd and kubelet.
type kubeletNode struct {
	*kubetest.Node
	rt  *runtimeHost
	cri *cri
}

// kubeletSysctls are the host sysctls kubelet sets when they differ
// (protectKernelDefaults off): the test shows it the values it wants.
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory": "1",
	"kernel/panic":         "10",
	"kernel/panic_on_oops": "1",
}

const kubeletUserPrefix = "system:node:"

// readHostSysctls reads the sysctls kubelet would set, as the host has them
// (the test process's /proc).
func readHostSysctls(t *testing.T) string {
	t.Helper()
	var out []string
	for key := range kubeletSysctls {
		b, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, key+"="+strings.TrimSpace(string(b)))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// TestKubeletChain: kubelet → containerd's CRI → pier on two nodes in
// Kubernetes mode (pierd --allocate-pod-cidrs gives each node its range):
// the nodes turn Ready once pierd has written the CNI config, a Pod on each
// gets its address from Pier in its node's range, the API shows it (as
// kubectl get pod -o wide would), the pods ping each other across the
// nodes, pierctl inspect shows the sandbox's Pier attachment and
// containerd's loopback attachment without problems, and deleting the
// pods releases their addresses.
func TestKubeletChain(t *testing.T) {
	tools := requireRuntimeTools(t, "containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl=PIER_CRICTL", "nsenter", "mount")
	tools["kubelet"] = kubetest.Binary(t, "kubelet", "PIER_KUBELET")
	var users []kubetest.User
	for i := 1; i <= 2; i++ {
		users = append(users, kubetest.User{Name: fmt.Sprintf("%snode%d", kubeletUserPrefix, i), Groups: []string{"system:nodes", "system:masters"}})
	}
	e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: "vxlan", Users: users})
	e.Args = []string{"--allocate-pod-cidrs"}
	ctx := context.Background()
	if _, err := e.API.Client.CoreV1().ServiceAccounts("default").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err) // no controller manager makes it; pod admission wants it
	}
	hostSysctls := readHostSysctls(t)
	t.Cleanup(func() {
		if now := readHostSysctls(t); now != hostSysctls {
			t.Errorf("the host's sysctls changed: %s, were %s", now, hostSysctls)
		}
	})
	var nodes []*kubeletNode
	for i := 1; i <= 2; i++ {
		nodes = append(nodes, startKubeletNode(t, e, i, tools))
	}
	start := time.Now()
	for _, n := range nodes {
		waitNodeReady(t, e, n)
		n.WaitConflist()
	}
	t.Logf("MEASURE kubelet: both nodes Ready %v after the last kubelet started", time.Since(start).Round(time.Millisecond))

	var pods []*corev1.Pod
	for _, n := range nodes {
		pods = append(pods, createPod(t, e, n, "pier-"+n.Name))
	}
	for i, n := range nodes {
		pods[i] = waitPodRunning(t, e, n, pods[i].Name)
	}
	t.Logf("pods (as kubectl get pod -o wide):\n%s", podTable(pods))
	ips := make([]netip.Addr, len(pods))
	for i, n := range nodes {
		ips[i] = checkPodAddress(t, e, n, pods[i])
	}
	for i, n := range nodes {
		out, err := n.cri.run("exec", podContainer(t, n, pods[i].Name), "ping", "-c", "2", "-w", "10", ips[1-i].String())
		if err != nil {
			t.Fatalf("pod on %s cannot ping %s on %s: %v\n%s", n.Name, ips[1-i], nodes[1-i].Name, err, out)
		}
	}
	checkInspectSandbox(t, nodes[0], pods[0])

	for i, n := range nodes {
		if err := e.API.Client.CoreV1().Pods("default").Delete(ctx, pods[i].Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		kubetest.Poll(t, 60*time.Second, "pod "+pods[i].Name+"'s address released", func() bool {
			return reservationCount(t, n) == 0
		}, nil)
	}
}

// startKubeletNode builds node i: its runtimeHost on the underlay, pierd
// writing into the CNI config dir containerd reads, containerd with the
// busybox image imported, and kubelet.
func startKubeletNode(t *testing.T, e *kubetest.Env, i int, tools map[string]string) *kubeletNode {
	t.Helper()
	rt := newRuntimeHost(t)
	n := &kubeletNode{Node: e.Join(i, rt.sb), rt: rt}
	n.ConfDir = rt.cniConfDir
	n.Start()
	n.cri = startContainerd(t, rt, tools["crictl"])
	archive := filepath.Join(rt.dir, "image.tar")
	buildImage(t, tools["busybox"], archive, runtimeImage, pauseImage)
	n.cri.importImage(t, archive, runtimeImage, pauseImage)
	// Runs before the runtimeHost's cleanup: the pods go through CRI (so
	// through pier's DEL) before the PID namespace is killed.
	t.Cleanup(func() { _, _ = n.cri.run("rmp", "--all", "--force") })
	n.prepareKubelet(t)
	rt.startBackground(nil, "kubelet.log", tools["kubelet"],
		"--config", filepath.Join(rt.dir, "kubelet", "config.yaml"),
		"--kubeconfig", e.API.Kubeconfig(t, kubeletUserPrefix+n.Name),
		"--root-dir", filepath.Join(rt.dir, "kubelet", "root"),
		"--hostname-override", n.Name, "--node-ip", n.IP, "--v", "2")
	return n
}

// prepareKubelet writes kubelet's config and keeps what it would touch on
// the host inside the runtimeHost (see the file comment).
func (n *kubeletNode) prepareKubelet(t *testing.T) {
	t.Helper()
	rt := n.rt
	dir := filepath.Join(rt.dir, "kubelet")
	for _, d := range []string{"root", "volume-plugins", "pod-logs", "varlog", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rt.exec(nil, "mount", "--bind", filepath.Join(dir, "varlog"), "/var/log"); err != nil {
		t.Fatal(err)
	}
	for key, val := range kubeletSysctls {
		f := filepath.Join(dir, "sysctl", strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(f, []byte(val+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.exec(nil, "mount", "--bind", f, "/proc/sys/"+key); err != nil {
			t.Fatal(err)
		}
	}
	createCgroupParent(t, rt)
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: %s
readOnlyPort: 0
healthzPort: 0
resolvConf: %s
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "0%%", "nodefs.available": "0%%", "imagefs.available": "0%%", "nodefs.inodesFree": "0%%"}
volumePluginDir: %s
podLogsDir: %s
containerRuntimeEndpoint: unix://%s
serializeImagePulls: false
`, rt.cgroupParent, n.IP, resolv, filepath.Join(dir, "volume-plugins"), filepath.Join(dir, "pod-logs"),
		filepath.Join(rt.dir, "containerd", "containerd.sock"))
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	rt.logOnFailure(filepath.Join(rt.dir, "kubelet.log"))
}

// createCgroupParent makes kubelet's cgroupRoot (the runtimeHost's cgroup
// parent) in every hierarchy, as kubelet requires; a cpuset cgroup starts
// with no CPUs and memory nodes, so it gets its parent's. The runtimeHost
// removes the tree when the test ends.
func createCgroupParent(t *testing.T, rt *runtimeHost) {
	t.Helper()
	for _, root := range rt.cgroupRoots {
		d := filepath.Join(root, rt.cgroupParent)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(root, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func waitNodeReady(t *testing.T, e *kubetest.Env, n *kubeletNode) {
	t.Helper()
	kubetest.Poll(t, 90*time.Second, n.Name+" Ready", func() bool {
		obj, err := e.API.Client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range obj.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	}, func() string { return n.Log() })
}

// createPod creates a busybox Pod bound to the node (no scheduler runs):
// the image imported into containerd, never pulled.
func createPod(t *testing.T, e *kubetest.Env, n *kubeletNode, name string) *corev1.Pod {
	t.Helper()
	no := false
	var zero int64
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": "pier-e2e"}},
		Spec: corev1.PodSpec{
			NodeName:                      n.Name,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			DNSPolicy:                     corev1.DNSDefault,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "busybox", Image: runtimeImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sleep", "86400"},
			}},
		},
	}
	p, err := e.API.Client.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitPodRunning(t *testing.T, e *kubetest.Env, n *kubeletNode, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	start := time.Now()
	kubetest.Poll(t, 90*time.Second, "pod "+name+" Running", func() bool {
		var err error
		p, err = e.API.Client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
	}, func() string {
		b, _ := os.ReadFile(filepath.Join(n.rt.dir, "kubelet.log"))
		return string(b)
	})
	t.Logf("MEASURE kubelet: pod %s Running %v after it was seen created", name, time.Since(start).Round(time.Millisecond))
	return p
}

// podTable is what `kubectl get pod -o wide` prints, from the API's Pods.
func podTable(pods []*corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %-8s %-16s %s\n", "NAME", "STATUS", "IP", "NODE")
	for _, p := range pods {
		fmt.Fprintf(&b, "%-16s %-8s %-16s %s\n", p.Name, p.Status.Phase, p.Status.PodIP, p.Spec.NodeName)
	}
	return b.String()
}

// checkPodAddress: the address the API shows for the pod is in its node's
// range (spec.podCIDRs, assigned by pierd), and it is the one Pier's store
// holds for the pod's sandbox.
func checkPodAddress(t *testing.T, e *kubetest.Env, n *kubeletNode, p *corev1.Pod) netip.Addr {
	t.Helper()
	ip := netip.MustParseAddr(p.Status.PodIP)
	node, err := e.API.Client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
	if err != nil || len(node.Spec.PodCIDRs) == 0 || !netip.MustParsePrefix(node.Spec.PodCIDRs[0]).Contains(ip) {
		t.Fatalf("pod %s has %s, outside %s's ranges %v (%v)", p.Name, ip, n.Name, node.Spec.PodCIDRs, err)
	}
	sandbox := podSandbox(t, n, p.Name)
	held := reservations(t, n.Conflist)
	if !slices.ContainsFunc(held, func(r ipam.Reservation) bool {
		return r.Addr == ip && r.Owner == ipam.Owner{ContainerID: sandbox, IfName: "eth0"}
	}) {
		t.Fatalf("Pier's store does not hold %s for sandbox %s: %v", ip, sandbox, held)
	}
	return ip
}

// reservationCount is how many addresses the node's store holds (the
// conflist's dataDir: pierd's --data-dir).
func reservationCount(t *testing.T, n *kubeletNode) int { return len(reservations(t, n.Conflist)) }

func podSandbox(t *testing.T, n *kubeletNode, pod string) string {
	t.Helper()
	id := n.cri.mustRun(t, "pods", "--name", pod, "-q")
	if strings.Count(id, "\n") != 0 || id == "" {
		t.Fatalf("want one sandbox of pod %s, got %q", pod, id)
	}
	return id
}

func podContainer(t *testing.T, n *kubeletNode, pod string) string {
	t.Helper()
	id := n.cri.mustRun(t, "ps", "--label", "io.kubernetes.pod.name="+pod, "-q")
	if strings.Count(id, "\n") != 0 || id == "" {
		t.Fatalf("want one container of pod %s, got %q", pod, id)
	}
	return id
}

// checkInspectSandbox: pierctl inspect of a kubelet-made sandbox (inside
// the runtime's mount namespace, where libcni's cache is) lists Pier's
// attachment and containerd's cni-loopback one, as another plugin's, and
// reports no problem for either.
func checkInspectSandbox(t *testing.T, n *kubeletNode, p *corev1.Pod) {
	t.Helper()
	sandbox := podSandbox(t, n, p.Name)
	out, err := n.rt.exec(nil, filepath.Join(n.Env.Bin, "pierctl"), "inspect", sandbox, "--conf-dir", n.ConfDir, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var atts []struct {
		Network      string   `json:"network"`
		IfName       string   `json:"ifname"`
		OtherPlugins []string `json:"otherPlugins"`
		Problems     []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &atts); err != nil {
		t.Fatalf("pierctl inspect: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, a := range atts {
		if len(a.Problems) != 0 {
			t.Errorf("pierctl inspect: problems for %s/%s: %q", a.Network, a.IfName, a.Problems)
		}
		seen[a.Network+"/"+strings.Join(a.OtherPlugins, ",")] = true
	}
	if !seen["pier/"] || !seen["cni-loopback/loopback"] || len(atts) != 2 {
		t.Fatalf("pierctl inspect %s: want Pier's attachment and containerd's loopback:\n%s", sandbox, out)
	}
}
