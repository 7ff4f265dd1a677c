// Package cluster is pierd's cluster mode: one address space across the
// nodes of a cluster, kept in etcd, and the routes between nodes.
//
// # Keys
//
// Everything lives under /pier/ in etcd:
//
//	/pier/config               cluster settings (CIDRs, block sizes, routing mode), written once by `pierctl cluster init`
//	/pier/nodes/<name>         a live node: its underlay IP; bound to the node's lease (TTL LeaseTTL)
//	/pier/blocks/<addr>-<bits> an address block: its node (affinity), the node's IP, and every allocation in it
//
// # Blocks and affinity
//
// A cluster CIDR is cut into blocks (/26 for IPv4, /122 for IPv6 by
// default). A node claims the lowest block nobody holds (found with a
// keys-only read of /pier/blocks/) with a transaction
// that succeeds only if the block key does not exist (CreateRevision = 0)
// and the node's own key is still held by the node's current lease: a node
// whose lease has lapsed cannot claim, and two nodes racing for one block
// see one winner; the loser moves to the next. The block key itself carries
// no lease: a node that dies keeps its blocks, so an address it handed out
// is never handed out again by someone else, even if its pierd or its
// lease comes back later. (flannel binds a node's subnet to its lease: a
// node paused past its TTL loses its subnet to another node while its
// containers still hold addresses in it.) Blocks come back only when they
// are empty (the
// owning node gives back a block empty for longer than BlockGrace,
// keeping at least one; pierd --block-grace) or when an operator says the
// node is gone
// (`pierctl node forget NAME`: its allocations are dropped and its blocks
// deleted, each with a compare-and-swap on the block's revision).
//
// The node lease (TTL LeaseTTL, pierd --node-ttl; kept alive by pierd,
// re-granted when it lapses) therefore says only "this node is alive": it
// guards claims and lets operators see which nodes run, but an expired
// lease frees nothing. A node paused or cut off past its TTL registers
// again under a new lease and keeps allocating in its blocks (e2e
// TestClusterLeaseLapse).
//
// # Requested addresses
//
// A requested address (CNI_ARGS IP=, the ips capability) is honoured when
// it lies in one of the node's blocks, or in a free block, which the node
// then claims for it (same claim transaction as above). It fails with
// code 101 and the reason when its block belongs to another node, when it
// is held, when it is the block's network, gateway or broadcast address,
// or when it lies outside the cluster CIDRs: a block's addresses are only
// ever written by its node.
//
// # Allocations
//
// An allocation is recorded inside its block's value, Calico-style: its
// owner (network, container ID, ifname) and an identity of its own (64
// random bits, made when the address is taken), so the common ADD touches
// exactly one key,
// written with compare-and-swap on the block's ModRevision: a writer that
// raced us (forget, a second pierd for the same node name) makes the
// transaction fail, pierd reloads the blocks and retries (bounded:
// MaxRetries). Every node's blocks hold their owners, so `pierctl leases`
// and GC see the whole cluster with one range read.
//
// Batching: a node's calls go through one goroutine. It takes every call
// waiting (up to MaxBatch), allocates or releases all of them in its
// in-memory copy of the node's blocks, and commits every changed block in
// ONE etcd transaction (one Compare per block, one Put per block). Under
// load a transaction carries tens of allocations, so the rate is bounded by
// etcd's fsync per transaction rather than per address; unloaded, an ADD
// costs one round trip and one fsync.
//
// The node is the only writer of its blocks, so its in-memory copy is
// current: CHECK (and DEL's first step, which asks what the owner holds)
// answers from it without a round trip to etcd.
//
// pierd serves all this as an ipam.Allocator (Cluster): its gRPC server,
// errors and the plugin's checks of an answer are those of every mode.
//
// Measured on 2 cores with Debian's etcd 3.4 (client v3.6), three pierd in
// one sandbox: one allocation at a time ≈ 1 ms (one fsync); 600 at once
// over three nodes in ~30 transactions, 6,000–10,000/s, against ~2,000/s
// for raw compare-and-swap by three writers on their own keys.
//
// # Gateways and addresses (the cost of blocks)
//
// A container gets its address with its block's prefix length (e.g.
// 10.244.3.7/26) and the block's first host address as gateway, which the
// plugin puts on the node's bridge (isGateway). So each block costs its
// network address, gateway and (IPv4) broadcast: 61 containers per /26;
// the bridge holds one address per block of the node; containers of one
// node in two blocks talk through the node (one routed hop), not at L2.
// The gain is that no proxy ARP and no per-container route is needed:
// every node routes whole blocks. A block given back keeps its gateway on
// the old node's bridge until the agent sees another node claim it; the
// agent then removes that address, whose connected route would otherwise
// capture the block's traffic: from Pier's bridge (pierd --cni-bridge),
// and from no other link.
//
// Masquerade: the plugin exempts the prefixes of the addresses it got
// (here a block), so pod-to-pod traffic between nodes is exempt only once
// the plugin also exempts its IPAM ranges (the cluster CIDR); until then
// cluster networks run with ipMasq false or accept SNAT between nodes.
//
// # Routes between nodes (Agent)
//
// Each pierd watches /pier/blocks/ and hands package routing (the data
// plane, shared with pierd's Kubernetes mode) the State "every block of
// another node, via that node": routing keeps one route per block in the
// main table with its own protocol, so it finds and removes its own routes
// and no other.
//
//   - host-gw: "block via <node IP>": nodes on one L2 link, no
//     encapsulation, no MTU cost. An IPv6 block goes via the node's IPv6
//     underlay address (pierd --node-ip6, recorded as the block's nodeIP);
//     an IPv6 block of a node without one is not routed.
//   - vxlan: a pier.vxlan device whose MAC is derived from the node IP
//     (routing.MACFor), and per remote node one FDB entry (its MAC → its
//     IP) and one permanent neighbour entry (its IP → its MAC) on
//     pier.vxlan, and "block via <node IP> dev pier.vxlan onlink". Unlike
//     flannel no VTEP address is needed: the remote node IP is only a
//     neighbour key on pier.vxlan. Cost: 50 bytes per packet (container MTU
//     1450 on a 1500 underlay). IPv4 only: IPv6 blocks are not routed in
//     vxlan mode.
//
// A block the agent cannot parse (key or value) is not routed; it is
// logged and counted (Agent.Unreadable), never skipped in silence.
//
// The watch resumes from the revision after the last full read; a compacted
// revision (at once) or a broken watch (after a second) triggers a full
// re-read, and so does a timer, every ResyncEvery (e2e
// TestClusterWatchCompacted, in-process TestAgentResyncsAfterCompaction: a
// node cut off while etcd is compacted past its watch converges within
// seconds of reaching etcd again). A full read carries every block's allocations
// (about 100 bytes per container), the price of one key per block. Routes of a block whose node died stay while
// the block exists: containers that outlive pierd keep their connectivity.
//
// # etcd failures
//
// Every etcd operation of a call has OpTimeout (1.5 s): with etcd down an
// ADD fails with code 11 after one such timeout (1.5 s measured, with its
// rollback's release: TestEtcdDownAddFailsWithinOneTimeout); STATUS reads
// the config key and answers 50 when it cannot. Routes are never removed
// because etcd is unreachable: the agent only acts on what it read.
//
// DEL is queued: the release of each allocation the owner holds is kept in
// memory and in <data-dir>/cluster-del-queue.json (written durably: a lost
// entry leaks an address until a GC) and the call succeeds; the addresses
// stay allocated in etcd, so never reused, until the queue is drained. A
// queued release names the allocation — address and identity — not only
// its owner: runtimes reuse a container ID and ifname when they retry a
// sandbox, and a release by owner would free the retried sandbox's address
// (and let the next container have it too). So an allocation whose release
// is queued no longer counts as its owner's (CHECK does not report it, a
// new ADD gets an allocation of its own), and draining frees exactly the
// allocations named, or drops an entry whose allocation is already gone.
// Only a committed drain removes an entry: no other call changes the
// queue. A DEL whose release cannot be written fails with code 5, so the
// runtime retries it. A pierd that starts with a queue written by owner
// only (before identities existed, or a release queued before the node's
// blocks were first read) resolves it against the blocks as first read,
// before any allocation is made, so it too names older allocations only.
//
// Draining never holds calls up: the queue rides along with the next batch
// while etcd answers; once a transaction has failed, the allocator stops
// trying etcd for queued releases alone and probes it in the background
// every DrainEvery, draining as soon as it answers. A batch of releases
// only is queued at once while etcd is believed down.
package cluster
