package netpol

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// policy is a NetworkPolicy compiled into what the data plane renders and
// what the engine keeps sets for.
type policy struct {
	ref dataplane.Ref
	// podSel picks the pods of ref.Namespace the policy applies to; nil
	// (an invalid selector) picks none.
	podSel labels.Selector
	// dirs says which directions the policy isolates its pods in
	// (policyTypes), rules what each direction allows.
	dirs  [2]bool
	rules [2][]dataplane.Rule
	// selectors and portNames are the sets the rules refer to.
	selectors []peerSelector
	portNames []string
	// fingerprint tells an update that changes nothing (an informer's
	// periodic resync) from a real one.
	fingerprint string
}

// peerSelector is the pods one peer's podSelector and namespaceSelector
// pick: pods of namespace (when nsSel is nil) or of every namespace nsSel
// matches, whose labels podSel matches.
type peerSelector struct {
	namespace string
	nsSel     labels.Selector
	podSel    labels.Selector
	canonical string // names the set: equal selectors share one
}

func (s peerSelector) setName() string { return dataplane.SelectorSetName(s.canonical) }

// describe is the set's comment.
func (s peerSelector) describe() string {
	pods := "all pods"
	if !s.podSel.Empty() {
		pods = "pods " + s.podSel.String()
	}
	if s.nsSel == nil {
		return fmt.Sprintf("pier: %s of namespace %s", pods, s.namespace)
	}
	if s.nsSel.Empty() {
		return fmt.Sprintf("pier: %s of every namespace", pods)
	}
	return fmt.Sprintf("pier: %s of namespaces %s", pods, s.nsSel.String())
}

func (s peerSelector) matches(p *podState, nsLabels labels.Set) bool {
	if s.nsSel == nil {
		if p.ref.Namespace != s.namespace {
			return false
		}
	} else if !s.nsSel.Matches(nsLabels) {
		return false
	}
	return s.podSel.Matches(p.labels)
}

// compile turns a NetworkPolicy into a policy. A part the API server
// would have refused (an unparsable selector, CIDR or port) matches
// nothing, and is reported: never wider than written. A pod selector that
// cannot be parsed selects no pod.
func compile(np *networkingv1.NetworkPolicy) (*policy, error) {
	p := &policy{ref: dataplane.Ref{Namespace: np.Namespace, Name: np.Name}}
	var errs []error
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		errs = append(errs, fmt.Errorf("podSelector: %w", err))
	} else {
		p.podSel = sel
	}
	p.dirs = policyTypes(np.Spec)
	c := compiler{ns: np.Namespace, seenSel: map[string]bool{}, seenPort: map[string]bool{}}
	if p.dirs[dataplane.Ingress] {
		for i, r := range np.Spec.Ingress {
			if rule, ok := c.rule(r.From, r.Ports, fmt.Sprintf("ingress[%d]", i)); ok {
				p.rules[dataplane.Ingress] = append(p.rules[dataplane.Ingress], rule)
			}
		}
	}
	if p.dirs[dataplane.Egress] {
		for i, r := range np.Spec.Egress {
			if rule, ok := c.rule(r.To, r.Ports, fmt.Sprintf("egress[%d]", i)); ok {
				p.rules[dataplane.Egress] = append(p.rules[dataplane.Egress], rule)
			}
		}
	}
	p.selectors, p.portNames = c.selectors, c.portNames
	p.fingerprint = fingerprint(p)
	errs = append(errs, c.errs...)
	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("policy %s: %w", p.ref, err)
	}
	return p, nil
}

// policyTypes: without policyTypes a policy isolates for ingress always
// and for egress when it has egress rules, as the API documents.
func policyTypes(spec networkingv1.NetworkPolicySpec) [2]bool {
	var dirs [2]bool
	if len(spec.PolicyTypes) == 0 {
		dirs[dataplane.Ingress] = true
		dirs[dataplane.Egress] = len(spec.Egress) > 0
		return dirs
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			dirs[dataplane.Ingress] = true
		case networkingv1.PolicyTypeEgress:
			dirs[dataplane.Egress] = true
		}
	}
	return dirs
}

func fingerprint(p *policy) string {
	h := sha256.New()
	sel := "<none>"
	if p.podSel != nil {
		sel = p.podSel.String()
	}
	fmt.Fprintf(h, "%s|%v|%+v|", sel, p.dirs, p.rules)
	for _, s := range p.selectors {
		fmt.Fprintf(h, "%s|", s.canonical)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// compiler collects one policy's rules and the sets they use.
type compiler struct {
	ns        string
	selectors []peerSelector
	portNames []string
	seenSel   map[string]bool
	seenPort  map[string]bool
	errs      []error
}

// rule compiles one rule. Invalid peers and ports are left out, so the
// rule matches less; ok is false when it can match nothing: every peer or
// every port it lists is invalid (an empty list, by contrast, matches
// everything).
func (c *compiler) rule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, where string) (dataplane.Rule, bool) {
	var r dataplane.Rule
	for i, peer := range peers {
		p, err := c.peer(peer)
		if err != nil {
			c.errs = append(c.errs, fmt.Errorf("%s peer %d: %w", where, i, err))
			continue
		}
		r.Peers = append(r.Peers, p)
	}
	for i, port := range ports {
		p, err := c.port(port)
		if err != nil {
			c.errs = append(c.errs, fmt.Errorf("%s port %d: %w", where, i, err))
			continue
		}
		r.Ports = append(r.Ports, p)
	}
	peersOK := len(peers) == 0 || len(r.Peers) > 0
	portsOK := len(ports) == 0 || len(r.Ports) > 0
	return r, peersOK && portsOK
}

func (c *compiler) peer(peer networkingv1.NetworkPolicyPeer) (dataplane.Peer, error) {
	if peer.IPBlock != nil {
		if peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return dataplane.Peer{}, errors.New("ipBlock with a selector")
		}
		return ipBlock(peer.IPBlock)
	}
	if peer.PodSelector == nil && peer.NamespaceSelector == nil {
		return dataplane.Peer{}, errors.New("no selector and no ipBlock")
	}
	s := peerSelector{namespace: c.ns, podSel: labels.Everything()}
	if peer.PodSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return dataplane.Peer{}, fmt.Errorf("podSelector: %w", err)
		}
		s.podSel = sel
	}
	if peer.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			return dataplane.Peer{}, fmt.Errorf("namespaceSelector: %w", err)
		}
		s.nsSel, s.namespace = sel, ""
		s.canonical = "namespaces(" + sel.String() + ") pods(" + s.podSel.String() + ")"
	} else {
		s.canonical = "namespace " + c.ns + " pods(" + s.podSel.String() + ")"
	}
	if !c.seenSel[s.canonical] {
		c.seenSel[s.canonical] = true
		c.selectors = append(c.selectors, s)
	}
	return dataplane.Peer{Set: s.setName()}, nil
}

func ipBlock(b *networkingv1.IPBlock) (dataplane.Peer, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return dataplane.Peer{}, fmt.Errorf("ipBlock cidr: %w", err)
	}
	p := dataplane.Peer{CIDR: cidr.Masked()}
	for _, e := range b.Except {
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			return dataplane.Peer{}, fmt.Errorf("ipBlock except: %w", err)
		}
		// An except outside the CIDR (or of the other family) excludes
		// nothing the CIDR matches; the API refuses it, and so do we.
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() < cidr.Bits() || !cidr.Contains(ex.Addr()) {
			return dataplane.Peer{}, fmt.Errorf("ipBlock except %s is not inside %s", e, b.CIDR)
		}
		p.Except = append(p.Except, ex.Masked())
	}
	return p, nil
}

// portNameRE is an IANA service name, the syntax of named ports.
var portNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$`)

func (c *compiler) port(p networkingv1.NetworkPolicyPort) (dataplane.Port, error) {
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	num, ok := protocols[proto]
	if !ok {
		return dataplane.Port{}, fmt.Errorf("protocol %q", proto)
	}
	out := dataplane.Port{Proto: num}
	if p.Port == nil {
		if p.EndPort != nil {
			return out, errors.New("endPort without port")
		}
		return out, nil
	}
	if name := p.Port.StrVal; p.Port.Type == intstr.String {
		if !portNameRE.MatchString(name) {
			return out, fmt.Errorf("port name %q", name)
		}
		if p.EndPort != nil {
			return out, errors.New("endPort with a named port")
		}
		out.Name = name
		if !c.seenPort[name] {
			c.seenPort[name] = true
			c.portNames = append(c.portNames, name)
		}
		return out, nil
	}
	if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
		return out, fmt.Errorf("port %d", p.Port.IntVal)
	}
	out.First, out.Last = uint16(p.Port.IntVal), uint16(p.Port.IntVal)
	if p.EndPort != nil {
		if *p.EndPort < p.Port.IntVal || *p.EndPort > 65535 {
			return out, fmt.Errorf("endPort %d before port %d", *p.EndPort, p.Port.IntVal)
		}
		out.Last = uint16(*p.EndPort)
	}
	return out, nil
}

var protocols = map[corev1.Protocol]uint8{
	corev1.ProtocolTCP:  dataplane.TCP,
	corev1.ProtocolUDP:  dataplane.UDP,
	corev1.ProtocolSCTP: dataplane.SCTP,
}
