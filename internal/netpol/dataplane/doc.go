// Package dataplane keeps network policy state in Pier's table inet pier
// (google/nftables over netlink, no nft binary), for pierd's engine, and
// holds the one thing the plugin needs at ADD: entering a container's
// addresses into the policy maps, in the ADD's own transaction. It knows
// nothing of Kubernetes and stays cheap to link into the plugin.
//
// # Design notes: the objects
//
//	map   np-ingress4, np-ingress6   local pod address : verdict (goto its ingress chain)
//	map   np-egress4,  np-egress6    local pod address : verdict (goto its egress chain)
//	chain np-forward-egress   filter forward, priority 0, policy accept:
//	                            ct state established,related accept
//	                            icmpv6 type 133-136 ip6 hoplimit 255 accept (neighbour discovery, on-link only)
//	                            ip saddr vmap @np-egress4 ; ip6 saddr vmap @np-egress6
//	chain np-forward-ingress  filter forward, priority 1: the same with daddr and np-ingress*,
//	                            and, before the maps, drops the broadcast and multicast
//	                            of local pods (meta pkttype != host ip saddr @np-egress4 drop)
//	chain np-input-egress     filter input, priority 0: as np-forward-egress (pods to the node)
//	chain np-unclassified     drop   (the verdict of an address whose pod pierd has not seen)
//	chain np-pod-<ns>/<pod>-in|-eg    per local pod and direction:
//	                            jump np-pol-<ns>/<policy>-in ... ; drop      (isolated)
//	                            accept                                       (no policy selects it)
//	                            drop                                         (pod gone)
//	chain np-pol-<ns>/<policy>-in|-eg per policy and direction, one rule per
//	                            rule × peer × port × family, each ending in accept:
//	                            ip saddr @np-sel-<hash>-4 meta l4proto tcp th dport 80-81 accept
//	                            ip saddr 10.0.0.0/8 ip saddr != 10.1.0.0/16 accept
//	                            ip daddr . meta l4proto . th dport @np-port-<name>-4 accept
//	set   np-sel-<hash>-4|-6        addresses of the pods one selector picks, cluster-wide,
//	                                each commented with its pod
//	set   np-port-<name>-4|-6       address . protocol . port of the container ports so named
//
// Names longer than 100 bytes of "<ns>/<name>" are hashed. No name can be
// one of a CNI network's masquerade objects or of the host port objects.
//
// An accept in a jumped-to chain ends the base chain with accept, and the
// kernel then runs the next base chain of the hook: so the forward hook
// checks the client's egress (np-forward-egress), then the server's
// ingress (np-forward-ingress). Each node checks only its own pods: a
// packet between nodes is checked for egress where it leaves and for
// ingress where it arrives. The first rule of each base chain lets
// replies and the rest of allowed connections through on the conntrack
// entry, so the per-policy rules see only the first packet of a flow.
//
// Traffic between two pods of one node is bridged, not routed. It reaches
// the inet forward hook only through br_netfilter (bridge-nf-call-
// iptables and -ip6tables, on by default and needed by kube-proxy too;
// EnableBridgeNetfilter makes sure), which also gives it a conntrack
// entry. The bridge family's own hooks were the alternative: they see
// bridged frames without br_netfilter, but conntrack in the bridge family
// needs nf_conntrack_bridge (missing from this kernel and from many),
// routed traffic (across nodes, to and from outside, DNATed host ports)
// never passes them, and the same policy would need two rule sets. One
// set of chains at the inet forward hook covers every path.
//
// # Who writes what
//
// pierd (the engine, through DataPlane) owns everything but the map
// elements. The plugin owns those: ADD adds two per address (Attachment,
// in the same batch as masquerade and host ports), leading to the pod's
// chains, whose name it computes from CNI_ARGS K8S_POD_NAMESPACE and
// K8S_POD_NAME; DEL removes them. When the chains do not exist yet (pierd
// has not seen the pod; the plugin looks the ingress chain up by name
// before its batch) the elements lead to np-unclassified instead, and
// pierd moves them to the pod's chains when it learns the pod's address
// (a Pointer), so a pod's traffic is held to its policies, or dropped,
// from its first packet. After a flushed table the plugin's records put
// its elements back (package nodestate), and a resync adds those of the
// local pods it knows that are still missing, commented "pierd: <pod>",
// which go again with the pod.
//
// A pod chain is removed when its pod is deleted, once no element leads to
// it: the kernel refuses to delete a chain in use (EBUSY), which makes the
// removal safe against an ADD that just pointed at it; until then it
// drops.
//
// # Cost
//
// The plugin's part is two elements per address in a batch it sends
// anyway (about 60 µs more kernel time per ADD with 500 policies than with
// none, for the commit-time validation of the table's jumps). pierd keeps
// one netlink socket: closing one waits for the kernel's deferred release
// of replaced objects (an RCU grace period, ~10 ms), which an event need
// not pay. Changes bigger than 96 messages go in several batches, split
// between whole chains: the kernel acknowledges every message and a few
// hundred acknowledgements overflow the socket's receive buffer.
package dataplane
