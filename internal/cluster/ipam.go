package cluster

import (
	"context"
	"net/netip"
	"slices"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// Cluster is an ipam.Allocator over the cluster's blocks; pierd serves it.
var (
	_ ipam.Allocator = (*Cluster)(nil)
	_ ipam.Inventory = (*Cluster)(nil)
)

// pools maps a network's range sets to cluster CIDRs: each range set's
// subnet must lie in (or hold) a cluster CIDR of its family (the netconf's
// "subnet" is normally the cluster CIDR itself). No range set: one address
// per cluster CIDR.
func (c *Cluster) pools(conf *config.IPAMConfig) ([]int, error) {
	if err := config.ValidateNetworkName(conf.Name); err != nil {
		return nil, err
	}
	var out []int
	for i, set := range conf.RangeSets {
		found := -1
		for _, r := range set {
			for j, cidr := range c.cfg.CIDRs {
				if cidr.Addr().Is4() == r.Subnet.Addr().Is4() && cidr.Overlaps(r.Subnet) {
					found = j
				}
			}
		}
		if found < 0 {
			return nil, cnierr.New(cnierr.InvalidConfig, "range set %d of network %q is outside the cluster CIDRs %v", i, conf.Name, c.cfg.CIDRs)
		}
		out = append(out, found)
	}
	if len(out) == 0 {
		for j := range c.cfg.CIDRs {
			out = append(out, j)
		}
	}
	return out, nil
}

func allocOf(network string, o ipam.Owner) Alloc {
	return Alloc{Network: network, ContainerID: o.ContainerID, IfName: o.IfName}
}

// checkOwner refuses an owner that cannot be recorded, as the local store
// does (the same rule for every mode).
func checkOwner(a Alloc) error {
	if err := store.ValidOwner(ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName}); err != nil {
		return cnierr.Wrap(err, cnierr.InvalidEnv, "CNI_CONTAINERID %q / CNI_IFNAME %q", a.ContainerID, a.IfName)
	}
	return nil
}

// Allocate implements ipam.Allocator: one address per range set from the
// node's blocks, with its block's prefix length and the block's gateway.
func (c *Cluster) Allocate(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) ([]ipam.Address, error) {
	pools, err := c.pools(conf)
	if err != nil {
		return nil, err
	}
	want, err := c.requested(conf.Requested, pools)
	if err != nil {
		return nil, err
	}
	a := allocOf(conf.Name, owner)
	if err := checkOwner(a); err != nil {
		return nil, err
	}
	r := c.alloc.call(ctx, &op{kind: opAdd, owner: a, pools: pools, want: want})
	if r.err != nil {
		return nil, r.err
	}
	out := make([]ipam.Address, len(r.addrs))
	for i, addr := range r.addrs {
		block := netip.PrefixFrom(addr, c.cfg.BlockBits(c.cfg.CIDRs[pools[i]])).Masked()
		out[i] = ipam.Address{Prefix: netip.PrefixFrom(addr, block.Bits()), Gateway: block.Addr().Next(), RangeSet: i}
	}
	return out, nil
}

// requested maps requested addresses (CNI_ARGS IP=, the ips capability)
// to the pools: each must lie in one pool's cluster CIDR, at most one per
// pool. The allocator then takes it in a block of the node or claims its
// free block (package doc, "Requested addresses").
func (c *Cluster) requested(reqs []netip.Addr, pools []int) ([]netip.Addr, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	want := make([]netip.Addr, len(pools))
	for _, a := range reqs {
		i := slices.IndexFunc(pools, func(p int) bool { return c.cfg.CIDRs[p].Contains(a) })
		switch {
		case i < 0:
			return nil, cnierr.New(cnierr.AddressUnavailable, "requested address %s is outside the network's cluster CIDRs", a)
		case want[i].IsValid():
			return nil, cnierr.New(cnierr.AddressUnavailable, "requested addresses %s and %s are in the same cluster CIDR %s: one address per range set", want[i], a, c.cfg.CIDRs[pools[i]])
		}
		want[i] = a
	}
	return want, nil
}

// Release implements ipam.Allocator. With etcd down the release is
// queued, naming the allocations it frees, and the call succeeds (package
// doc, "etcd failures").
func (c *Cluster) Release(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) (int, error) {
	if _, err := c.pools(conf); err != nil {
		return 0, err
	}
	a := allocOf(conf.Name, owner)
	if err := checkOwner(a); err != nil {
		return 0, err
	}
	r := c.alloc.call(ctx, &op{kind: opDel, owner: a, queue: true})
	return r.released, r.err
}

// Check implements ipam.Allocator: what the owner holds on this node,
// answered from the allocator's copy of the node's blocks (the node is
// their only writer, so the copy is current, and DEL, whose first step
// this is, works with etcd down).
func (c *Cluster) Check(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) ([]netip.Addr, error) {
	if _, err := c.pools(conf); err != nil {
		return nil, err
	}
	r := c.alloc.call(ctx, &op{kind: opCheck, owner: allocOf(conf.Name, owner)})
	if r.err != nil {
		return nil, r.err
	}
	if len(r.addrs) == 0 {
		return nil, cnierr.New(cnierr.UnknownContainer, "container %s (interface %s) holds no address in network %q",
			owner.ContainerID, owner.IfName, conf.Name)
	}
	return r.addrs, nil
}

// GC implements ipam.Allocator: the network's allocations on this node
// whose owner is not valid are released.
func (c *Cluster) GC(ctx context.Context, conf *config.IPAMConfig, valid []ipam.Owner) (int, error) {
	if _, err := c.pools(conf); err != nil {
		return 0, err
	}
	keep := map[Alloc]bool{}
	for _, o := range valid {
		keep[allocOf(conf.Name, o)] = true
	}
	r := c.alloc.call(ctx, &op{kind: opGC, owner: Alloc{Network: conf.Name}, valid: keep})
	return r.released, r.err
}

// List implements ipam.Allocator: the network's allocations on every node
// (one read of all blocks), in address order.
func (c *Cluster) List(ctx context.Context, conf *config.IPAMConfig) ([]ipam.Reservation, error) {
	ctx, cancel := context.WithTimeout(ctx, OpTimeout)
	defer cancel()
	all, _, err := ListBlocks(ctx, c.cli)
	if err != nil {
		return nil, unavailable(err)
	}
	var out []ipam.Reservation
	for _, rb := range all {
		for addr, a := range rb.b.Holdings() {
			if a.Network == conf.Name {
				out = append(out, ipam.Reservation{Addr: addr, Owner: ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName},
					RangeSet: ipam.RangeSetOf(conf, addr)})
			}
		}
	}
	slices.SortFunc(out, func(x, y ipam.Reservation) int { return x.Addr.Compare(y.Addr) })
	return out, nil
}

// Networks implements ipam.Inventory: every network with an allocation
// in the cluster.
func (c *Cluster) Networks(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, OpTimeout)
	defer cancel()
	all, _, err := ListBlocks(ctx, c.cli)
	if err != nil {
		return nil, unavailable(err)
	}
	var names []string
	for _, rb := range all {
		for _, a := range rb.b.Allocs {
			names = append(names, a.Network)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// Status implements ipam.Allocator: code 50 when etcd does not answer (an
// ADD could not be served).
func (c *Cluster) Status(ctx context.Context, conf *config.IPAMConfig) error {
	if _, err := c.pools(conf); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, OpTimeout)
	defer cancel()
	if _, err := c.cli.Get(ctx, configKey); err != nil {
		return cnierr.Wrap(err, cnierr.PluginNotAvailable, "etcd is unreachable: network %q cannot allocate", conf.Name)
	}
	return nil
}
