// Package netpol enforces Kubernetes NetworkPolicy (networking.k8s.io/v1)
// on one node: an Engine holds every Pod, Namespace and NetworkPolicy of
// the cluster, fed as events (SetPod, DeletePod, SetNamespace,
// SetPolicy, …, which client-go informers drive in pierd), and keeps the
// node's share of them in nftables through a DataPlane, one transaction
// per event.
//
// # What an event becomes
//
// A policy is compiled (compile.go) into rules per direction: each rule
// lists peers (a selector, as a set of pod addresses; an ipBlock, matched
// inline with its excepts) and ports (protocol, port or range, or a named
// port, looked up in a set of address . protocol . port tuples of the pods
// whose containers declare it). Equal selectors of different policies
// share one set, reference-counted. The engine then keeps, incrementally:
//
//   - selector sets: on a pod event only the pod's addresses are
//     re-evaluated against each set; on a namespace relabel, its pods'
//     addresses against the sets with a namespaceSelector;
//   - policy chains: rewritten when their policy changes;
//   - local pod chains (pods whose spec.nodeName is this node): one per
//     direction, jumping to the chain of each policy that selects the pod
//     for that direction (isolated, then drop) or accepting (open), made as
//     soon as the pod is scheduled, before kubelet starts its sandbox, so
//     the plugin's ADD finds them.
//
// What an event changes is computed from memory, not from the kernel:
// the in-memory state is the truth, the data plane follows it, and when
// an Apply fails (someone flushed the table) the engine rewrites
// everything (Resync), as it does once at Start and on demand.
//
// # Semantics, as the API documents them
//
// A pod is isolated in a direction when any policy of its namespace with
// that policy type selects it; traffic is then allowed when any such
// policy's rule allows it, in both directions needed (egress at the
// client's node, ingress at the server's). Replies of allowed connections
// pass (conntrack). Policies without policyTypes isolate for ingress, and
// for egress when they have egress rules. Host network pods are never
// selected nor matched as peers, and pods that finished are no peers (their
// address may be another pod's already). An address two pods report (it
// moved from a pod being deleted, whose Pod object outlives its sandbox,
// to a new one) belongs to one of them — the one not being deleted, else
// the newest — and only that pod's labels, named ports and chains count
// for it. A part of a policy the API server
// would refuse (bad selector, CIDR, port) matches nothing, never more.
// The node's own traffic to its pods (kubelet's probes) never passes the
// policy chains. Connections established before a policy changes keep
// going (their packets take the conntrack shortcut); new ones follow the
// new policy.
//
// The kernel objects and their costs are described in package dataplane
// and in docs/networkpolicy.md.
package netpol
