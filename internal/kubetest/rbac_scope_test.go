package kubetest

import (
	"context"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pier-cni/pier/internal/kube"
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
	// The claims now live in a namespace of their own, where pierd lists
	// them; kube-system's Leases it can neither list, read, take, delete
	// nor create (a Role cannot narrow create by name, hence the namespace).
	if _, err := pierd.CoordinationV1().Leases(kube.ClaimNamespace).List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("pierd cannot list its claims in %s: %v", kube.ClaimNamespace, err)
	}
	leases := pierd.CoordinationV1().Leases("kube-system")
	if _, err := leases.List(ctx, metav1.ListOptions{}); err == nil {
		t.Errorf("pierd's ServiceAccount lists kube-system's Leases")
	}
	if _, err := leases.Get(ctx, lease.Name, metav1.GetOptions{}); err == nil {
		t.Errorf("pierd's ServiceAccount reads kube-system's Lease %s", lease.Name)
	}
	l, err := e.API.Client.CoordinationV1().Leases("kube-system").Get(ctx, lease.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	thief := "attacker"
	l.Spec.HolderIdentity = &thief
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err == nil {
		t.Errorf("pierd's ServiceAccount took over kube-system's Lease %s (leader election)", l.Name)
	}
	if err := leases.Delete(ctx, l.Name, metav1.DeleteOptions{}); err == nil {
		t.Errorf("pierd's ServiceAccount deleted kube-system's Lease %s (leader election)", l.Name)
	}
	sched := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "kube-scheduler", Namespace: "kube-system"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &thief}}
	if _, err := leases.Create(ctx, sched, metav1.CreateOptions{}); err == nil {
		t.Errorf("pierd's ServiceAccount created kube-system's Lease %s (leader election)", sched.Name)
	}
}
