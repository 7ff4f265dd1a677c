package kubebench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
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

// pierdRSSAtScale creates fakeNodes Node objects (each a /26 of
// 10.246.0.0/16, an InternalIP and a VTEP in 198.18.0.0/15, the
// benchmarking range: nothing is sent to them), waits until n's pierd
// routes them all, and returns its resident set then; the nodes are
// deleted after.
func pierdRSSAtScale(t *testing.T, e *kubetest.Env, n *kubetest.Node) float64 {
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
	kubetest.Poll(t, 120*time.Second, "pierd to route the fake nodes", func() bool {
		s, err := nodestatus.Read(nodestatus.PathFor(n.Socket))
		return err == nil && len(s.Routes) >= fakeNodes
	}, n.Log)
	t.Logf("MEASURE %d Node objects created in %v; all routed by pierd %v after the first create", fakeNodes, created.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // a moment for the garbage of the burst to be collected, as a node at rest
	rss := rssMiB(t, n.PID())
	err := e.API.Client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "pier-bench=fake"})
	if err != nil {
		t.Fatal(err)
	}
	return rss
}

func createFake(ctx context.Context, e *kubetest.Env, i int) error {
	ip := netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 1)})
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 246, byte(i / 4), byte(i % 4 * 64)}), 26)
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("fake-%04d", i), Labels: map[string]string{"pier-bench": "fake"},
			Annotations: map[string]string{kube.AnnotationVTEP: ip.String(), kube.AnnotationVTEPMAC: routing.MACFor(ip).String()}},
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
