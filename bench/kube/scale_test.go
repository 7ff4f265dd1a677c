package kubebench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/kube"
	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/nodestatus"
	"github.com/pier-cni/pier/internal/routing"
	"github.com/pier-cni/pier/internal/testnet"
)

const fakeNodes = 1000

// rssAtScale creates fakeNodes Node objects — each with a /27 of
// 10.245.128.0/17 (inside flannel's network, so flannel routes it too), an
// InternalIP and VTEP in 198.18.0.0/15 (the benchmarking range: nothing is
// sent there), and both Pier's and flannel's vxlan annotations — waits
// until pierd on p and flanneld on f route them all, and returns both
// resident sets then; the nodes are deleted after.
func rssAtScale(t *testing.T, e *kubetest.Env, p *kubetest.Node, f *flannelNode) (float64, float64) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	errs := make(chan error, fakeNodes)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if err := createFake(ctx, e, i); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range fakeNodes {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	created := time.Since(start)
	kubetest.Poll(t, 180*time.Second, "pierd to route the fake nodes", func() bool {
		s, err := nodestatus.Read(nodestatus.PathFor(p.Socket))
		return err == nil && len(s.Routes) >= fakeNodes
	}, p.Log)
	pierDone := time.Since(start)
	kubetest.Poll(t, 180*time.Second, "flanneld to route the fake nodes", func() bool {
		out, _ := f.SB.Node.Run("ip", "-4", "route", "show", "dev", "flannel.1")
		return strings.Count(out, "\n") >= fakeNodes
	}, f.logTail)
	t.Logf("MEASURE %d Node objects created in %v; all routed by pierd %v and by flanneld %v after the first create",
		fakeNodes, created.Round(time.Millisecond), pierDone.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // the agents at rest after the burst
	pr, fr := rssMiB(t, p.PID()), rssMiB(t, f.cmd.Process.Pid)
	err := e.API.Client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "pier-bench=fake"})
	if err != nil {
		t.Fatal(err)
	}
	return pr, fr
}

func createFake(ctx context.Context, e *kubetest.Env, i int) error {
	ip := netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 1)})
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 245, byte(128 + i/8), byte(i % 8 * 32)}), 27)
	mac := routing.MACFor(ip).String()
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("fake-%04d", i), Labels: map[string]string{"pier-bench": "fake"},
			Annotations: map[string]string{
				kube.AnnotationVTEP: ip.String(), kube.AnnotationVTEPMAC: mac,
				"flannel.alpha.coreos.com/backend-type":        "vxlan",
				"flannel.alpha.coreos.com/backend-data":        fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac),
				"flannel.alpha.coreos.com/kube-subnet-manager": "true",
				"flannel.alpha.coreos.com/public-ip":           ip.String(),
			}},
		Spec: corev1.NodeSpec{PodCIDR: cidr.String(), PodCIDRs: []string{cidr.String()}},
	}
	created, err := e.API.Client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}
	_, err = e.API.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// iperf measures TCP throughput from a to b (Gbit/s) for 3 s.
func iperf(t *testing.T, from, to *testnet.NS, addr netip.Addr) float64 {
	t.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		return 0
	}
	srv := exec.Command("ip", "netns", "exec", to.Name, "iperf3", "-s", "-1", "-B", addr.String())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }() // our own child, by PID
	for range 100 {
		out, err := from.Run("iperf3", "-c", addr.String(), "-t", "3", "-J")
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err == nil && json.Unmarshal([]byte(out), &r) == nil && r.End.SumReceived.BitsPerSecond > 0 {
			return r.End.SumReceived.BitsPerSecond / 1e9
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("iperf3 to %s never ran", addr)
	return 0
}
