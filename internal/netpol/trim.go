package netpol

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
)

// TrimPod is the Pod informer's transform: its cache keeps of each Pod of
// the cluster only what the engine reads (podFrom) — name, namespace,
// labels, creation and deletion timestamps (which of two pods reporting
// one address holds it), node, hostNetwork, the named container ports (of
// containers and of sidecar init containers), phase and addresses — and
// no managedFields.
// A Pod as the API serves it (env, volumes, probes, conditions, container
// statuses, managedFields) is several KiB; trimmed, a few hundred bytes,
// and pierd holds every Pod of the cluster. It is idempotent, as a
// transform must be, and passes other objects (tombstones, which carry
// their own copy) on with their managedFields dropped.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		if a, err := meta.Accessor(obj); err == nil {
			a.SetManagedFields(nil)
		}
		return obj, nil
	}
	out := &corev1.Pod{TypeMeta: p.TypeMeta}
	out.Name, out.Namespace, out.UID, out.ResourceVersion = p.Name, p.Namespace, p.UID, p.ResourceVersion
	out.Labels, out.CreationTimestamp, out.DeletionTimestamp = p.Labels, p.CreationTimestamp, p.DeletionTimestamp
	out.Spec.NodeName, out.Spec.HostNetwork = p.Spec.NodeName, p.Spec.HostNetwork
	out.Spec.Containers = namedPorts(p.Spec.Containers, false)
	out.Spec.InitContainers = namedPorts(p.Spec.InitContainers, true)
	out.Status.Phase, out.Status.PodIP, out.Status.PodIPs = p.Status.Phase, p.Status.PodIP, p.Status.PodIPs
	return out, nil
}

// namedPorts keeps the named ports of containers (of sidecars only, the
// init containers that keep running, when sidecars), one container
// holding them all: which container declares a port does not matter to a
// policy.
func namedPorts(cs []corev1.Container, sidecars bool) []corev1.Container {
	var keep corev1.Container
	for _, c := range cs {
		if sidecars && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
			continue
		}
		for _, p := range c.Ports {
			if p.Name != "" {
				keep.Ports = append(keep.Ports, corev1.ContainerPort{Name: p.Name, Protocol: p.Protocol, ContainerPort: p.ContainerPort})
			}
		}
	}
	if len(keep.Ports) == 0 {
		return nil
	}
	if sidecars {
		always := corev1.ContainerRestartPolicyAlways
		keep.RestartPolicy = &always
	}
	return []corev1.Container{keep}
}
