// Package kube is pierd's Kubernetes mode: the API server is the
// datastore. It is the control plane beside package cluster's etcd one;
// both hand package routing (the data plane) the routes to program.
//
// # The node's pod ranges
//
// A node's ranges are its Node's spec.podCIDRs (spec.podCIDR on clusters
// from before dual stack), which kube-controller-manager fills when it
// runs with --allocate-node-cidrs. For clusters whose controller manager
// does not, the Allocator (pierd --allocate-pod-cidrs) assigns them: see
// allocate.go for why every range is first claimed with a coordination
// Lease created only if absent, and only then written into the Node.
//
// Once the ranges are known, and only then, pierd writes the conflist
// (CNIConfig): kubelet reports the node NotReady until a CNI config
// exists, so no pod is scheduled onto a node whose ranges are unknown.
// The conflist carries everything the plugin needs — the ranges as
// pier-ipam range sets, the cluster CIDRs as nonMasqueradeCIDRs, the MTU —
// so a pod start asks nothing of pierd or of the API server: pods keep
// starting while either is down. A Node re-created with other ranges gets
// a new conflist; running pods keep the addresses they have.
//
// # Routes (the route agent)
//
// A Node informer (NewInformers: a factory whose caches keep only what
// networking reads, shared with other pierd components) kicks one
// reconcile of the whole route table per relevant change — a node's
// ranges, InternalIPs or VTEP annotations, or its deletion; kubelet's
// status updates are ignored — and kicks coalesce, so 1,000 Node events
// at start are a couple of reconciles. Plan turns the Node objects into
// routes (host-gw: each range via the node's InternalIP of its family;
// vxlan: via the range's network address as a neighbour key resolving to
// the node's VTEP MAC, whose frames go to its VTEP address), and package
// routing writes only what differs from the kernel. Nothing is removed
// because the API server is unreachable: the informer's cache keeps its
// last content, and the agent only acts on it.
//
// In vxlan mode each pierd publishes its VTEP address and MAC as Node
// annotations (AnnotationVTEP, AnnotationVTEPMAC), and keeps them there (a
// re-created Node gets them back). The MAC is derived from the VTEP
// address, so it is the same after a restart and the other nodes' FDB
// entries stay right. Unlike cluster mode, which keys neighbours by node
// IP and so routes IPv4 only over vxlan, the neighbour key here is the
// range's own network address: an IPv6 range crosses an IPv4 underlay.
//
// # Network policy
//
// With pierd --network-policy the API client also serves informers on
// every Pod, Namespace and NetworkPolicy (PolicyInformers, read only),
// which package netpol's engine runs, and the conflist carries
// "networkPolicy": true; the wiring is pierd's (cmd/pierd/policy.go).
//
// Node objects are written by many hands (kubelet, controllers, people),
// so ParseNode and Plan accept anything: what cannot be used is left out
// and reported (pierctl node lists it), never a panic (FuzzNodeRoutes),
// and no Node can make this node route its own ranges, its own address or
// every address elsewhere.
package kube
