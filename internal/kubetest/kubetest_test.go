package kubetest

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestStart: the harness's API server serves, in its namespace only, and
// survives a stop and restart of the API server with its data (etcd keeps
// it).
func TestStart(t *testing.T) {
	ns := testnet.NewNS(t, "pt-api-")
	start := time.Now()
	api := Start(t, Options{NS: ns, Users: []User{{Name: "viewer"}}})
	t.Logf("MEASURE kube-apiserver ready in %v", time.Since(start))
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "kubetest-node"}}
	if _, err := api.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC is on: a user without a binding is refused.
	viewer, err := kubernetesFor(api, "viewer")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := viewer.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err == nil {
		t.Fatal("a user without a role binding read a Node: RBAC is off")
	}
	api.StopAPIServer()
	if _, err := api.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err == nil {
		t.Fatal("the API server answers after StopAPIServer")
	}
	api.Restart(t)
	if _, err := api.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
}

func kubernetesFor(api *APIServer, user string) (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(api.RESTConfig(user))
}
