package kube

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
)

// trim is the Node informer's transform: the cache keeps managedFields of
// no object (often half of one), and of a Node only what networking reads
// (name, uid, labels, Pier's annotations, spec.podCIDR and podCIDRs,
// status.addresses). A Node with its images, conditions and capacity is
// 5–20 KiB; trimmed, a few hundred bytes, so 1,000 nodes cost well under a
// MiB of cache.
func trim(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	if n, ok := obj.(*corev1.Node); ok {
		return trimNode(n), nil
	}
	return obj, nil
}

// trimNode keeps what ParseNode reads (and labels, which policies may
// select nodes by). It is idempotent, as a transform must be.
func trimNode(n *corev1.Node) *corev1.Node {
	out := &corev1.Node{TypeMeta: n.TypeMeta}
	out.Name, out.UID, out.ResourceVersion, out.Labels = n.Name, n.UID, n.ResourceVersion, n.Labels
	out.DeletionTimestamp = n.DeletionTimestamp
	for _, k := range []string{AnnotationVTEP, AnnotationVTEPMAC} {
		if v, ok := n.Annotations[k]; ok {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	out.Spec.PodCIDR, out.Spec.PodCIDRs = n.Spec.PodCIDR, n.Spec.PodCIDRs
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
		}
	}
	return out
}
