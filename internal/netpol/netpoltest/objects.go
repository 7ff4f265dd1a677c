package netpoltest

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Namespaces and pods of every scenario: namespace N is labelled ns=N,
// pod P is labelled pod=P, and each pod serves TCP 80 and 81, UDP 80 and
// 81 (container ports named as upstream: serve-80-tcp, …) and UDP 53.
var (
	NamespaceNames = []string{"x", "y", "z"}
	PodNames       = []string{"x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"}
)

// NodeOf places the pods on two nodes, so that every scenario has pairs
// on one node (bridged) and across nodes (routed).
func NodeOf(pod string) int {
	switch pod {
	case "x/a", "x/b", "y/c", "z/a", "z/b":
		return 1
	}
	return 2
}

// ServedPorts are the container ports of every pod.
var ServedPorts = []corev1.ContainerPort{
	{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
	{Name: "serve-81-tcp", ContainerPort: 81, Protocol: corev1.ProtocolTCP},
	{Name: "serve-80-udp", ContainerPort: 80, Protocol: corev1.ProtocolUDP},
	{Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
	{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
}

func split(pod string) (string, string) {
	ns, name, _ := strings.Cut(pod, "/")
	return ns, name
}

// PodObject is the Pod object of a scenario pod running on nodeName with
// address addr (invalid: not yet known) and labels (nil: the default).
func PodObject(pod, nodeName string, addr netip.Addr, labels map[string]string) *corev1.Pod {
	ns, name := split(pod)
	if labels == nil {
		labels = map[string]string{"pod": name}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{
			{Name: "serve", Image: "echo", Ports: ServedPorts},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if addr.IsValid() {
		p.Status.PodIP = addr.String()
		p.Status.PodIPs = []corev1.PodIP{{IP: addr.String()}}
	}
	return p
}

// NamespaceObject is a scenario namespace with labels (nil: the default).
func NamespaceObject(name string, labels map[string]string) *corev1.Namespace {
	if labels == nil {
		labels = map[string]string{"ns": name}
	}
	l := map[string]string{corev1.LabelMetadataName: name}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

// Policy builders.

// Sel is a matchLabels selector of key=value pairs.
func Sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

// Expr is a one-expression selector.
func Expr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

// Policy is a policy of namespace ns selecting podSel (nil: all pods).
func Policy(ns, name string, podSel *metav1.LabelSelector, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	if podSel == nil {
		podSel = &metav1.LabelSelector{}
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: *podSel, PolicyTypes: types},
	}
}

// In adds an ingress rule.
func In(p *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) *networkingv1.NetworkPolicy {
	p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	return p
}

// Out adds an egress rule.
func Out(p *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) *networkingv1.NetworkPolicy {
	p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	return p
}

// Peers lists peers.
func Peers(p ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return p }

// PodPeer, NSPeer and BothPeer are selector peers.
func PodPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func NSPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func BothPeer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

// CIDRPeer is an ipBlock peer.
func CIDRPeer(cidr netip.Prefix, except ...netip.Prefix) networkingv1.NetworkPolicyPeer {
	b := &networkingv1.IPBlock{CIDR: cidr.String()}
	for _, e := range except {
		b.Except = append(b.Except, e.String())
	}
	return networkingv1.NetworkPolicyPeer{IPBlock: b}
}

// Port is a numeric port; Range a port range; Named a named port; Proto a
// whole protocol.
func Port(proto corev1.Protocol, port int) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(int32(port))
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func Range(proto corev1.Protocol, first, last int) networkingv1.NetworkPolicyPort {
	p := Port(proto, first)
	end := int32(last)
	p.EndPort = &end
	return p
}

func Named(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func Proto(proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto}
}

// Host32 is a single-address prefix.
func Host32(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// PodOn is PodObject for a pod with its node named as the scenarios name
// them ("node1", "node2").
func PodOn(pod string, addr netip.Addr, labels map[string]string) *corev1.Pod {
	return PodObject(pod, fmt.Sprintf("node%d", NodeOf(pod)), addr, labels)
}
