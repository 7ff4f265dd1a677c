package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/kubetest"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/netpol/netpoltest"
)

// TestKubeletNetworkPolicy: the whole chain with pierd --network-policy.
// kubelet → containerd's CRI → pier with the conflist pierd wrote: each
// pod's address leads to its own chains (pierd saw the Pod bound to its
// node before kubelet made the sandbox, and containerd's CNI_ARGS name
// it), and pierd learns the address from the status kubelet writes. A
// deny-all-ingress policy of the pods' namespace, created through the API,
// stops the ping between the two pods (across the nodes, over vxlan) both
// ways; deleting it lets it through again.
func TestKubeletNetworkPolicy(t *testing.T) {
	tools := requireRuntimeTools(t, "containerd", "containerd-shim-runc-v2", "ctr", "runc", "crictl=PIER_CRICTL", "nsenter", "mount")
	tools["kubelet"] = kubetest.Binary(t, "kubelet", "PIER_KUBELET")
	var users []kubetest.User
	for i := 1; i <= 2; i++ {
		users = append(users, kubetest.User{Name: fmt.Sprintf("%snode%d", kubeletUserPrefix, i), Groups: []string{"system:nodes", "system:masters"}})
	}
	e := kubetest.NewEnv(t, kubetest.EnvOptions{Mode: "vxlan", Users: users})
	e.Args = []string{"--allocate-pod-cidrs", "--network-policy"}
	ctx := context.Background()
	if _, err := e.API.Client.CoreV1().ServiceAccounts("default").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err) // no controller manager makes it; pod admission wants it
	}
	var nodes []*kubeletNode
	for i := 1; i <= 2; i++ {
		nodes = append(nodes, startKubeletNode(t, e, i, tools))
	}
	for _, n := range nodes {
		waitNodeReady(t, e, n)
		if conf := n.WaitConflist(); !strings.Contains(conf, `"networkPolicy":true`) {
			t.Fatalf("the conflist of %s lacks networkPolicy: %s", n.Name, conf)
		}
	}
	var pods []*corev1.Pod
	for _, n := range nodes {
		pods = append(pods, createPod(t, e, n, "pol-"+n.Name))
	}
	ips := make([]netip.Addr, len(pods))
	for i, n := range nodes {
		pods[i] = waitPodRunning(t, e, n, pods[i].Name)
		ips[i] = checkPodAddress(t, e, n, pods[i])
		f, err := os.Open(n.SB.Node.Path)
		if err != nil {
			t.Fatal(err)
		}
		els, err := dataplane.ListElements(dataplane.InNetNS(int(f.Fd())))
		f.Close()
		want := dataplane.PodChainName(dataplane.Ref{Namespace: "default", Name: pods[i].Name}, dataplane.Ingress)
		found := false
		for _, el := range els {
			found = found || (el.Addr == ips[i] && el.Chain == want)
		}
		if err != nil || !found {
			t.Errorf("%s's address %s does not lead to %s: %+v (%v)", pods[i].Name, ips[i], want, els, err)
		}
	}
	ping := func(i int) bool {
		_, err := nodes[i].cri.run("exec", podContainer(t, nodes[i], pods[i].Name), "ping", "-c", "1", "-w", "2", ips[1-i].String())
		return err == nil
	}
	logs := func() string { return kubetest.Tail(nodes[0].Log(), 4000) + kubetest.Tail(nodes[1].Log(), 4000) }
	for i := range nodes {
		kubetest.Poll(t, 30*time.Second, fmt.Sprintf("%s pings %s", pods[i].Name, ips[1-i]), func() bool { return ping(i) }, logs)
	}
	pols := e.API.Client.NetworkingV1().NetworkPolicies("default")
	if _, err := pols.Create(ctx, netpoltest.Policy("default", "deny-ingress", nil, networkingv1.PolicyTypeIngress), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		kubetest.Poll(t, 30*time.Second, fmt.Sprintf("%s's ping to %s denied", pods[i].Name, ips[1-i]), func() bool { return !ping(i) }, logs)
	}
	if err := pols.Delete(ctx, "deny-ingress", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		kubetest.Poll(t, 30*time.Second, fmt.Sprintf("%s pings %s again", pods[i].Name, ips[1-i]), func() bool { return ping(i) }, logs)
	}
	for i, n := range nodes {
		if err := e.API.Client.CoreV1().Pods("default").Delete(ctx, pods[i].Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		kubetest.Poll(t, 60*time.Second, "pod "+pods[i].Name+"'s address released", func() bool { return reservationCount(t, n) == 0 }, nil)
	}
}
