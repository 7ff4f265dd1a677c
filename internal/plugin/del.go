package plugin

import (
	"context"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
)

// del removes the attachment.
//
// DEL policy — the one place it is decided: DEL must be idempotent, and
// runtimes call it after failed ADDs, after a container's namespace is gone,
// and twice (containerd repeats it with an empty CNI_NETNS). So a missing
// netns, a missing interface, a missing veth, an address already released and
// a missing nftables element are all success. Only failures that a retry may
// fix (store busy, netlink or nftables I/O) are returned.
//
// The address is released first, so whatever fails later, the pool does not
// leak; the addresses are looked up before that, because the masquerade
// elements to remove are keyed by them.
func (c *call) del(ctx context.Context) (types.Result, error) {
	addrs, err := c.ipam.Held(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.ipam.Del(ctx); err != nil {
		return nil, err
	}
	if c.args.Netns != "" {
		gone, err := bridge.DeleteContainerLink(c.args.Netns, c.args.IfName)
		if err != nil {
			return nil, err
		}
		for _, p := range gone {
			addrs = append(addrs, p.Addr())
		}
	}
	// The host end normally dies with its peer; this catches a veth whose
	// container end was never moved or whose netns path the runtime lost.
	if err := bridge.DeleteHostVeth(bridge.HostVethName(c.args.ContainerID, c.args.IfName)); err != nil {
		return nil, err
	}
	if !c.conf.IPMasq {
		return nil, nil
	}
	addrs = append(addrs, c.prevResultAddrs()...)
	if len(addrs) == 0 {
		return nil, nil
	}
	if err := nat.DelMasq(nat.Network{Name: c.conf.Name}, dedup(addrs)); err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "cannot remove masquerade elements of network %s", c.conf.Name)
	}
	return nil, nil
}

// prevResultAddrs returns the container's addresses from the prevResult the
// runtime passes to DEL, when it passes one.
func (c *call) prevResultAddrs() []netip.Addr {
	prev, err := c.prevResult()
	if err != nil || prev == nil {
		return nil // no usable prevResult: the other sources of addresses suffice
	}
	var addrs []netip.Addr
	for _, ipc := range prev.IPs {
		if a, ok := addrOf(ipc.Address.IP); ok {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

func dedup(addrs []netip.Addr) []netip.Addr {
	seen := make(map[netip.Addr]bool, len(addrs))
	out := addrs[:0]
	for _, a := range addrs {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
