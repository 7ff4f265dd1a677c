package plugin

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/container"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netns"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/nodestate"
	"github.com/pier-cni/pier/internal/veth"
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
// The address is released last, once nothing refers to it any more. The
// reference releases first; but a released address can be handed to a new
// container at once, and then this DEL would delete the new container's
// masquerade element (keyed by address), or the old interface would still
// hold the address the new container got. If a step fails, DEL returns the
// error with the address still held; the runtime retries DEL (the spec
// requires it) or GC reclaims it, so nothing leaks.
func (c *call) del(ctx context.Context) (types.Result, error) {
	step := c.stepTimer()
	if err := refuseNodeNetNS(c.args.Netns); err != nil {
		return nil, err
	}
	held, err := c.ipam.Held(ctx)
	if err != nil {
		return nil, err
	}
	step("ask IPAM what the attachment holds")
	// Deleting a link waits in the kernel for RCU (rcu_barrier, 10–30 ms
	// here), and so does closing an nftables socket once a transaction has
	// deleted something (until the kernel has released it). So the veth is
	// deleted while, beside it, the masquerade and source check elements
	// (one transaction), network policy, host port and MAC check elements,
	// the bandwidth limit's ifb and, when this is
	// the bridge's last container, the bridge's setup (host accepts,
	// marker) go; and the nftables sockets are closed after the veth is
	// gone, when their releases are usually done: closed at once, their
	// waits came on top of the veth's (3–4 ms more per DEL in interleaved
	// runs). All act on the node's namespace, which every unlocked thread
	// of this process is in. Host ports point at the address, so they too
	// go before it is released.
	//
	// Under the lock of the attachment's record, which is removed last, so
	// that no restore (pierd's, or another ADD's after a flush) puts back
	// what this removes.
	var gone, bound []netip.Addr
	var sockets nat.Closer
	later := nat.CloseLater(&sockets)
	err = nodestate.RemoveRecord(c.stateRoot(), c.conf.Name, c.owner(), func() error {
		rec, _, rerr := nodestate.ReadRecord(c.stateRoot(), c.conf.Name, c.owner())
		if rerr != nil {
			c.log.Warn("cannot read the attachment's record: removing the elements of the addresses IPAM and the interface name", "err", rerr)
		}
		bound = slices.Concat(held, rec.Sources)
		delByKey := func() error { return c.delByKey(held, bound, len(rec.Sources) > 0, later) }
		wait := concurrently(delByKey, func() error { return c.delPolicy(held, dataplane.LeaveOpen(sockets.Keep)) },
			func() error { return c.delNodeElements(later) }, c.removeLimits, func() error { return c.teardownBridge(later) })
		var linkErr error
		gone, linkErr = c.deleteLinks()
		step("delete the veth")
		err := errors.Join(linkErr, wait())
		sockets.Close()
		step("wait for the elements, ifb and bridge setup")
		return err
	})
	if err != nil {
		return nil, err
	}
	// Addresses IPAM no longer holds for us (a delegated IPAM, a repeated
	// DEL) may belong to another container by now: their elements are
	// removed only where the element names this attachment as its owner.
	// The source check's are keyed by this attachment's port: all of
	// them are its own.
	maybe := slices.DeleteFunc(append(gone, c.prevResultAddrs()...), func(a netip.Addr) bool { return slices.Contains(held, a) })
	unbound := slices.DeleteFunc(slices.Clone(maybe), func(a netip.Addr) bool { return slices.Contains(bound, a) })
	if err := errors.Join(c.delOwnMasq(maybe), c.delOwnPolicy(maybe), c.delSources(unbound)); err != nil {
		return nil, err
	}
	err = c.ipam.Del(ctx)
	step("release the addresses")
	return nil, err
}

// delByKey removes, in one nftables transaction, the masquerade elements
// of addresses this attachment still holds in IPAM (nobody else can have
// them, so no ownership check) and its port's source check with the
// port's pairs with bound: when the config asks for the check, or the
// record says the ADD made one (recorded). The port's name is derived
// from the attachment, so whatever is bound to it is its own.
func (c *call) delByKey(held, bound []netip.Addr, recorded bool, opts ...nat.Option) error {
	d := nat.Detachment{Network: nat.Network{Name: c.conf.Name}}
	if c.conf.IPMasq {
		d.Masq = dedup(slices.Clone(held))
	}
	if recorded || (c.conf.SourceCheck() && len(bound) > 0) {
		d.Sources = &nat.SourceCheck{Port: veth.HostName(c.args.ContainerID, c.args.IfName), Addrs: dedup(slices.Clone(bound))}
	}
	if err := nat.Detach(d, opts...); err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot remove the masquerade and source check elements of %s", c.owner())
	}
	return nil
}

// delSources removes the port's pairs with addrs (and its element), when
// the config asks for the check. Without a record and without addresses
// there is nothing to find: the record is written before the ADD's batch
// and removed only after delByKey ran.
func (c *call) delSources(addrs []netip.Addr) error {
	if !c.conf.SourceCheck() || len(addrs) == 0 {
		return nil
	}
	return c.delByKey(nil, addrs, false)
}

// refuseNodeNetNS stops a DEL whose CNI_NETNS is the node's own namespace:
// it would delete the node's interface named CNI_IFNAME. A missing netns is
// fine (already gone).
func refuseNodeNetNS(path string) error {
	if path == "" || !netns.Exists(path) {
		return nil
	}
	same, err := netns.IsCurrent(path)
	if err == nil && same {
		return cnierr.New(cnierr.InvalidEnv, "CNI_NETNS %q is the namespace the plugin runs in (the node's), not a container's", path)
	}
	return nil // not a namespace at all: nothing of ours can be in it
}

// deleteLinks removes the container's interface, which takes its veth peer
// with it, and returns the addresses it had.
func (c *call) deleteLinks() ([]netip.Addr, error) {
	var addrs []netip.Addr
	if c.args.Netns != "" {
		gone, err := container.DeleteLink(c.args.Netns, c.args.IfName)
		if err != nil {
			return nil, err
		}
		for _, p := range gone {
			addrs = append(addrs, p.Addr())
		}
	}
	// The host end normally dies with its peer; this catches a veth whose
	// container end was never moved or whose netns path the runtime lost.
	return addrs, veth.DeleteHostEnd(veth.HostName(c.args.ContainerID, c.args.IfName))
}

// delMasq removes the masquerade elements of addresses this attachment
// still holds in IPAM: nobody else can have them, so no ownership check.
func (c *call) delMasq(addrs []netip.Addr, opts ...nat.Option) error {
	if !c.conf.IPMasq || len(addrs) == 0 {
		return nil
	}
	if err := nat.DelMasq(nat.Network{Name: c.conf.Name}, dedup(addrs), opts...); err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot remove masquerade elements of network %s", c.conf.Name)
	}
	return nil
}

// delOwnMasq removes the elements of addrs that name this attachment as
// their owner, leaving alone an element another container now owns.
func (c *call) delOwnMasq(addrs []netip.Addr) error {
	if !c.conf.IPMasq || len(addrs) == 0 {
		return nil
	}
	elems, err := nat.ListMasq(c.conf.Name)
	if err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot read masquerade elements of network %s", c.conf.Name)
	}
	var mine []netip.Addr
	for _, e := range elems {
		if e.Owner == c.masqOwner() && slices.Contains(addrs, e.Addr) {
			mine = append(mine, e.Addr)
		}
	}
	return c.delMasq(mine)
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

// concurrently runs fns side by side and returns a function that waits for
// them and joins their errors.
func concurrently(fns ...func() error) (wait func() error) {
	errc := make(chan error, len(fns))
	for _, f := range fns {
		go func() { errc <- f() }()
	}
	return func() error {
		var errs []error
		for range fns {
			errs = append(errs, <-errc)
		}
		return errors.Join(errs...)
	}
}
