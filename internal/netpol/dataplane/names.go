package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Object names. Every network policy object of table inet pier starts with
// "np-" and none ends in "-postrouting", "-masq4", "-masq6" or
// "-masq-<8 hex digits>", the endings of a CNI network's masquerade objects,
// nor starts with "hostports", so no network name can produce one of them.
const (
	prefix = "np-"

	// The address maps: a local pod's address to its verdict chain.
	mapIngress4 = "np-ingress4"
	mapIngress6 = "np-ingress6"
	mapEgress4  = "np-egress4"
	mapEgress6  = "np-egress6"

	// Base chains.
	chainForwardEgress  = "np-forward-egress"
	chainForwardIngress = "np-forward-ingress"
	chainInputEgress    = "np-input-egress"

	// ChainUnclassified drops everything: the verdict of an address whose
	// pod pierd has not classified yet.
	ChainUnclassified = "np-unclassified"

	podPrefix    = "np-pod-"
	policyPrefix = "np-pol-"
	selPrefix    = "np-sel-"
	portPrefix   = "np-port-"

	// maxReadable is the longest "<namespace>/<name>" used verbatim in a
	// chain name; longer ones are hashed (the kernel allows 255 bytes, but
	// people read these names in `nft list`).
	maxReadable = 100
)

// Direction is ingress (traffic to a pod) or egress (traffic from it).
type Direction uint8

const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// suffix is the chain name ending of the direction.
func (d Direction) suffix() string {
	if d == Egress {
		return "-eg"
	}
	return "-in"
}

// Ref names a namespaced Kubernetes object (a pod or a policy).
type Ref struct {
	Namespace, Name string
}

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// objectPart is "<namespace>/<name>", or a hash of it when long. Kubernetes
// names are DNS labels and subdomains ([a-z0-9.-]), which nft accepts in
// chain names, and "/" separates them without ambiguity.
func objectPart(r Ref) string {
	s := r.String()
	if len(s) <= maxReadable {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "h" + hex.EncodeToString(sum[:10])
}

// PodChainName is the name of the verdict chain of a pod for direction d: the
// plugin computes it from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME), pierd
// from the Pod object, so both arrive at the same chain without talking.
func PodChainName(pod Ref, d Direction) string { return podPrefix + objectPart(pod) + d.suffix() }

// PolicyChainName is the name of the chain holding a policy's rules of
// direction d.
func PolicyChainName(policy Ref, d Direction) string {
	return policyPrefix + objectPart(policy) + d.suffix()
}

// chainKind classifies a chain name of table inet pier.
type chainKind uint8

const (
	kindOther chainKind = iota
	kindPod
	kindPolicy
	kindBase
)

func kindOf(chain string) chainKind {
	switch {
	case strings.HasPrefix(chain, podPrefix):
		return kindPod
	case strings.HasPrefix(chain, policyPrefix):
		return kindPolicy
	case chain == chainForwardEgress || chain == chainForwardIngress || chain == chainInputEgress || chain == ChainUnclassified:
		return kindBase
	}
	return kindOther
}

// parseChain returns the object part and direction of a pod or policy
// chain name; ok is false for other names.
func parseChain(chain string) (object string, d Direction, ok bool) {
	var rest string
	switch kindOf(chain) {
	case kindPod:
		rest = strings.TrimPrefix(chain, podPrefix)
	case kindPolicy:
		rest = strings.TrimPrefix(chain, policyPrefix)
	default:
		return "", 0, false
	}
	switch {
	case strings.HasSuffix(rest, "-in"):
		return strings.TrimSuffix(rest, "-in"), Ingress, true
	case strings.HasSuffix(rest, "-eg"):
		return strings.TrimSuffix(rest, "-eg"), Egress, true
	}
	return "", 0, false
}

// SelectorSetName names the address sets of one peer selector (a pair of
// sets: name+"-4", name+"-6"), from the selector's canonical text.
func SelectorSetName(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return selPrefix + hex.EncodeToString(sum[:6])
}

// PortSetName names the sets of the container ports called portName.
// Port names are IANA service names (at most 15 of [a-z0-9-]), which are
// valid in set names as they are.
func PortSetName(portName string) string { return portPrefix + portName }

// famSet is the name of a set pair's member of family v6 or not.
func famSet(base string, v6 bool) string {
	if v6 {
		return base + "-6"
	}
	return base + "-4"
}

// maxComment is the longest comment nft accepts on its command line
// (NFTNL_UDATA_COMMENT_MAXLEN); longer ones are cut so the ruleset stays
// loadable with `nft -f`.
const maxComment = 128

func clampComment(s string) string {
	if len(s) <= maxComment {
		return s
	}
	n := maxComment
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
