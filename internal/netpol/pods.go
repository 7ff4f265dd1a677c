package netpol

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// podState is what the engine keeps of a Pod.
type podState struct {
	ref    dataplane.Ref
	labels labels.Set
	node   string
	addrs  []netip.Addr // status.podIPs, unmapped, sorted
	// hostNetwork pods share the node's addresses: policies neither
	// select them nor match them as peers.
	hostNetwork bool
	// finished pods (Succeeded, Failed) hold no address any more: the
	// address may be another pod's already.
	finished bool
	// terminating pods (deletionTimestamp set) still run, and still report
	// their addresses, until their kubelet has stopped them; their sandbox,
	// and with it their address, may be gone before that (see owns).
	terminating bool
	created     time.Time // creationTimestamp
	ports       []namedPort
}

// owns reports whether p, rather than o, holds an address both report.
// Two pods report one address only while it moves: the old pod's sandbox
// is gone (and its address released to a new pod) before its Pod object
// is, which keeps phase Running until its kubelet reports back. The one
// holding it is the one not being deleted; of two not being deleted (a
// sandbox that died, its address reused before the status says so), the
// newer; names break ties, so that the answer never depends on the order
// of a map.
func (p *podState) owns(o *podState) bool {
	if p.terminating != o.terminating {
		return !p.terminating
	}
	if !p.created.Equal(o.created) {
		return p.created.After(o.created)
	}
	return compareRefs(p.ref, o.ref) < 0
}

// namedPort is a container port with a name, what a policy's named port
// resolves to.
type namedPort struct {
	name  string
	proto uint8
	port  uint16
}

func podFrom(p *corev1.Pod) *podState {
	s := &podState{
		ref:         dataplane.Ref{Namespace: p.Namespace, Name: p.Name},
		labels:      labels.Set(p.Labels),
		node:        p.Spec.NodeName,
		hostNetwork: p.Spec.HostNetwork,
		finished:    p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
		terminating: p.DeletionTimestamp != nil,
		created:     p.CreationTimestamp.Time,
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil && !slices.Contains(s.addrs, a.Unmap()) {
			s.addrs = append(s.addrs, a.Unmap())
		}
	}
	slices.SortFunc(s.addrs, netip.Addr.Compare)
	containers := slices.Clone(p.Spec.Containers)
	for _, c := range p.Spec.InitContainers {
		// Sidecars (init containers that keep running) serve ports too.
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			containers = append(containers, c)
		}
	}
	for _, c := range containers {
		for _, cp := range c.Ports {
			proto := corev1.ProtocolTCP
			if cp.Protocol != "" {
				proto = cp.Protocol
			}
			num, ok := protocols[proto]
			if cp.Name == "" || !ok || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			s.ports = append(s.ports, namedPort{name: cp.Name, proto: num, port: uint16(cp.ContainerPort)})
		}
	}
	return s
}

// peer reports whether the pod can match a policy peer: it has addresses
// of its own that are still its own.
func (p *podState) peer() bool {
	return p != nil && !p.hostNetwork && !p.finished && len(p.addrs) > 0
}

// localTo reports whether the pod runs on node with an address of its own
// (a pod network pod), so the node enforces its policies.
func (p *podState) localTo(node string) bool {
	return p != nil && !p.hostNetwork && p.node == node && node != ""
}

// namespaceLabels are a namespace's labels with the name label the API
// server sets on every namespace, so a selector on it works even before
// the Namespace object arrives.
func namespaceLabels(name string, l map[string]string) labels.Set {
	out := make(labels.Set, len(l)+1)
	for k, v := range l {
		out[k] = v
	}
	out[corev1.LabelMetadataName] = name
	return out
}
