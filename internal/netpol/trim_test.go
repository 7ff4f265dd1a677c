package netpol

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	. "github.com/pier-cni/pier/internal/netpol/netpoltest" //nolint:revive // the policy builders read as a DSL
)

// fullPod is a Pod as the API serves it: what the engine reads, and much
// it does not.
func fullPod() *corev1.Pod {
	p := PodObject("x/web-0", "n1", netip.MustParseAddr("10.0.0.2"), map[string]string{"app": "web"})
	p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::2"})
	p.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1500)}
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate}}
	p.OwnerReferences = []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web"}}
	always := corev1.ContainerRestartPolicyAlways
	p.Spec.Containers = []corev1.Container{{
		Name: "web", Image: "example/web:1",
		Env:       []corev1.EnvVar{{Name: "A", Value: "b"}},
		Ports:     []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9000}},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}},
	}}
	p.Spec.InitContainers = []corev1.Container{
		{Name: "setup", Ports: []corev1.ContainerPort{{Name: "ignored", ContainerPort: 1}}},
		{Name: "proxy", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolUDP}}},
	}
	p.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	// Which of two pods reporting one address holds it is decided by these.
	p.CreationTimestamp = metav1.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	deleted := metav1.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	p.DeletionTimestamp = &deleted
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "web", Ready: true, Image: "example/web:1"}}
	return p
}

// TestTrimPod: the engine reads the same of a trimmed Pod as of the full
// one; trimming twice changes nothing; the trimmed Pod is much smaller.
func TestTrimPod(t *testing.T) {
	full := fullPod()
	obj, err := TrimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	trimmed := obj.(*corev1.Pod)
	if got, want := podFrom(trimmed), podFrom(full); !reflect.DeepEqual(got, want) {
		t.Errorf("the engine reads %+v of the trimmed pod, %+v of the full one", got, want)
	}
	again, _ := TrimPod(trimmed)
	if !reflect.DeepEqual(again, trimmed) {
		t.Errorf("trimming twice changed the pod: %+v", again)
	}
	if trimmed.ManagedFields != nil || trimmed.Annotations != nil || trimmed.Status.Conditions != nil || trimmed.Spec.Volumes != nil {
		t.Errorf("trimmed pod keeps what the engine does not read: %+v", trimmed)
	}
	fb, _ := json.Marshal(full)
	tb, _ := json.Marshal(trimmed)
	t.Logf("pod as served %d bytes of JSON, trimmed %d", len(fb), len(tb))
	// Tombstones pass, their managedFields dropped from what they carry
	// only if it is a Pod (the transform sees the object itself).
	ts := cache.DeletedFinalStateUnknown{Key: "x/web-0", Obj: full}
	if out, err := TrimPod(ts); err != nil || !reflect.DeepEqual(out, ts) {
		t.Errorf("tombstone: %v %v", out, err)
	}
	ns := NamespaceObject("x", nil)
	ns.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "m"}}
	if out, _ := TrimPod(ns); out.(*corev1.Namespace).ManagedFields != nil {
		t.Errorf("a namespace keeps its managedFields")
	}
}
