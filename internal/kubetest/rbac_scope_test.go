package kubetest

import (
	"context"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestManifestLeaseRoleScope guards the control plane against pierd's
// credentials. The manifest's Role pier-pod-cidr-claims lets pierd list,
// create, update and delete every Lease of kube-system, where its pod
// range claims live, and where kube-controller-manager and kube-scheduler
// keep their leader election Leases. Every node runs a pierd, and its
// ServiceAccount token is readable by root on any node: whoever takes one
// node can then take the controller manager's leadership Lease (or delete
// it, over and over), which pierd never needs. The claims should live in
// a namespace of their own (or the Role be limited to what pierd made).
func TestManifestLeaseRoleScope(t *testing.T) {
	e := NewEnv(t, EnvOptions{Mode: "host-gw"})
	ctx := context.Background()
	holder := "master-1_0c5f"
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "kube-controller-manager", Namespace: "kube-system"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}
	if _, err := e.API.Client.CoordinationV1().Leases("kube-system").Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pierd, err := kubernetesFor(e.API, PierdUser)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pierd.CoordinationV1().Leases("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("pierd cannot list its claims: %v", err)
	}
	for i := range got.Items {
		l := &got.Items[i]
		if l.Name != "kube-controller-manager" {
			continue
		}
		thief := "attacker"
		l.Spec.HolderIdentity = &thief
		if _, err := pierd.CoordinationV1().Leases("kube-system").Update(ctx, l, metav1.UpdateOptions{}); err == nil {
			t.Errorf("pierd's ServiceAccount took over kube-system's Lease %s (leader election)", l.Name)
		}
		if err := pierd.CoordinationV1().Leases("kube-system").Delete(ctx, l.Name, metav1.DeleteOptions{}); err == nil {
			t.Errorf("pierd's ServiceAccount deleted kube-system's Lease %s (leader election)", l.Name)
		}
	}
}
