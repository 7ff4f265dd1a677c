// Package nat installs Pier's source NAT (masquerade) in nftables, talking to
// the kernel over netlink (google/nftables); it never executes nft or
// iptables.
//
// # Design notes: masquerade maps
//
// Pier owns one table per node, "inet pier", which nothing else writes to,
// so it can list and restore it without touching anyone else's rules. Each
// CNI network owns, in it (long network names are shortened, see
// objectNames):
//
//	map   <net>-masq4          ipv4_addr : verdict, one element per container address
//	map   <net>-masq6          ipv6_addr : verdict
//	chain <net>-postrouting    type nat hook postrouting priority srcnat
//	                             ip  saddr vmap @<net>-masq4
//	                             ip6 saddr vmap @<net>-masq6
//	chain <net>-masq-<hash>    one per list of subnets ("generation"):
//	                             ip daddr <subnet> return     (each subnet)
//	                             ip daddr 224.0.0.0/4 return
//	                             ip6 daddr ff00::/8 return    (and v6 subnets)
//	                             masquerade
//
// An element reads "10.15.20.2 comment "<container id>/eth0" : goto
// <net>-masq-<hash>": packets from a container address jump to the rules of
// the subnets its network had when it was added, which is what the
// reference plugin bakes into its per-container chain, at the cost of one
// element. ADD adds an element and DEL deletes it; nothing grows with the
// number of containers but the maps. The comment names the owner for
// CHECK, GC and `pierctl inspect` (ListMasq). Describe prints all of it.
//
// # Cost: what the kernel makes wait
//
// A transaction that only adds objects commits in about 100 µs. One that
// deletes or updates an existing object (an element, a rule, a chain —
// re-adding an existing chain is an update) defers the release of the old
// objects past an RCU grace period, and closing the netlink socket then
// waits for that release; a batch that fails waits for a grace period
// before returning. Either costs about 5-10 ms on the reference machine,
// the whole ADD budget. Hence:
//
//   - AddMasq first sends only the element additions (fast path). They fail
//     with ENOENT when the maps or the generation chain are missing (first
//     container of the network on this node, or new subnets) and with
//     EEXIST when the address points at another generation. Only then does
//     it read the maps and send the full setup (slow path).
//   - The slow path is idempotent without reading the rules: existing
//     table and maps are left as they are, each chain is flushed and refilled
//     in the same transaction, and present keys are deleted and re-added.
//     Transactions of one namespace are serialised by the kernel, so
//     concurrent setups leave each chain with exactly its rules.
//   - DelMasq adds each key (a no-op when present) and deletes it in one
//     batch, so a key already gone is no error and needs no read. It cannot
//     avoid the wait on close: a deletion is a release.
//   - Each call keeps one socket for all its batches and closes it once.
//
// # Owners
//
// An address re-added at the same generation by another owner keeps its
// first comment: the fast path cannot tell (google/nftables v0.3.0 offers
// no NLM_F_EXCL for elements). That needs an element to outlive its
// container while IPAM gives the address out again, which Pier's own DEL
// order (DelMasq before the IPAM release) prevents; a GC should still keep
// elements whose address IPAM holds for a live container. The
// maps and chains are never removed when they become empty, since another
// container may be added at the same moment; RemoveNetwork and
// PruneGenerations are for tooling and GC.
package nat
