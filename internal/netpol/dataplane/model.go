package dataplane

import (
	"net/netip"

	"golang.org/x/sys/unix"
)

// Peer is one side of a rule: who may talk to (ingress) or be reached by
// (egress) the pods the policy selects. The zero Peer is "anyone".
type Peer struct {
	// Set names a selector's address sets (SelectorSetName): the pods a
	// podSelector and/or namespaceSelector picks, kept up to date by pierd.
	Set string
	// CIDR and Except are an ipBlock: addresses in CIDR but in none of
	// Except. Matched inline, no set: an ipBlock never changes without its
	// policy changing.
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// IsAny reports whether the peer matches every address.
func (p Peer) IsAny() bool { return p.Set == "" && !p.CIDR.IsValid() }

// Protocols Kubernetes policies name.
const (
	TCP  = unix.IPPROTO_TCP
	UDP  = unix.IPPROTO_UDP
	SCTP = unix.IPPROTO_SCTP
)

// Port is one entry of a rule's ports: a protocol with every port (First
// and Last zero), a port or a range, or a named port resolved against the
// destination pod's container ports through the set PortSetName(Name).
type Port struct {
	Proto       uint8
	First, Last uint16
	Name        string
}

// Rule is one ingress or egress rule of a policy: traffic from (to) any of
// Peers on any of Ports is allowed. No peers: every address; no ports:
// every port and protocol.
type Rule struct {
	Peers []Peer
	Ports []Port
}

// PolicyChain is a policy's rules of one direction, rendered into chain
// PolicyChainName(Policy, Dir). A policy of that direction without rules
// allows nothing: its chain is empty.
type PolicyChain struct {
	Policy Ref
	Dir    Direction
	Rules  []Rule
}

// Name is the chain's name.
func (p PolicyChain) Name() string { return PolicyChainName(p.Policy, p.Dir) }

// PodVerdict is what a local pod's chain of one direction does.
type PodVerdict uint8

const (
	// Open: no policy selects the pod for this direction: accept.
	Open PodVerdict = iota
	// Isolated: jump to each selecting policy's chain (an accept there
	// ends the search), then drop.
	Isolated
	// Gone: the pod was deleted or finished; its chain drops until no
	// address points at it and it can be removed.
	Gone
)

// PodChain is a local pod's verdict chain of one direction.
type PodChain struct {
	Pod      Ref
	Dir      Direction
	Verdict  PodVerdict
	Policies []Ref // with Isolated: the policies selecting it, in order
	// chain is the name as read from the kernel, for stale chains whose
	// pod is known only by a hashed name.
	chain string
}

// Name is the chain's name.
func (p PodChain) Name() string {
	if p.chain != "" {
		return p.chain
	}
	return PodChainName(p.Pod, p.Dir)
}

// SetKind is what a set's elements are.
type SetKind uint8

const (
	// Addresses: pod addresses (a selector set).
	Addresses SetKind = iota
	// PortTuples: address . protocol . port (a named port set).
	PortTuples
)

// SetSpec describes one set pair (IPv4 and IPv6).
type SetSpec struct {
	Name    string // without the family suffix
	Kind    SetKind
	Comment string
}

// Member is one element of a set pair: an address (and for PortTuples a
// protocol and port), commented with the pod it stands for.
type Member struct {
	Addr  netip.Addr
	Proto uint8
	Port  uint16
	Pod   Ref
}

// SetMembers is a set pair with elements.
type SetMembers struct {
	SetSpec
	Members []Member
}

// ElementChange adds or removes members of an existing set pair.
type ElementChange struct {
	Set    string
	Kind   SetKind
	Add    []Member
	Remove []Member
}

// Pointer says that a local pod's address should lead to its chains. Pierd
// repoints an address's elements only when they exist and lead to
// ChainUnclassified: the plugin owns the elements' lifetime (ADD adds them,
// DEL removes them), so an address whose DEL already ran stays absent.
type Pointer struct {
	Addr netip.Addr
	Pod  Ref
}

// Delta is one event's change, applied in one transaction in this order:
// new sets (with members), element changes, policy chains (created or
// rewritten), pod chains, removed policy chains, removed sets; then, apart,
// pointers. Pod chains of deleted pods are removed apart too (RemovePods).
type Delta struct {
	NewSets        []SetMembers
	Elements       []ElementChange
	Policies       []PolicyChain
	Pods           []PodChain
	RemovePolicies []PolicyChain // only Policy and Dir are used
	RemoveSets     []SetSpec
	Pointers       []Pointer
	// Unpoint are addresses a local pod no longer has (it is gone, or its
	// address changed): the elements pierd added for them itself, after a
	// flushed table, go; the plugin's stay for its DEL.
	Unpoint []Pointer
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool {
	return len(d.NewSets) == 0 && len(d.Elements) == 0 && len(d.Policies) == 0 && len(d.Pods) == 0 &&
		len(d.RemovePolicies) == 0 && len(d.RemoveSets) == 0 && len(d.Pointers) == 0 && len(d.Unpoint) == 0
}

// State is everything pierd wants in the kernel, for a full resync.
type State struct {
	Sets     []SetMembers
	Policies []PolicyChain
	Pods     []PodChain
	// Pointers are the local pods' known addresses. Unlike in a Delta, a
	// resync adds a missing pointer: after a flushed table, an address
	// without element would escape its policies.
	Pointers []Pointer
}
