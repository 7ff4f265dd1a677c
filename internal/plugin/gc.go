package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/veth"
)

// gc removes everything of this network that no valid attachment owns: IPAM
// reservations (forwarded to a delegated IPAM), masquerade elements, host
// port, MAC check and network policy elements (their comment names the
// network), host
// veths on the bridge whose alias names this network, and ifb devices whose
// veth is gone (of any network: such an ifb shapes nothing any more). An
// empty list of valid attachments means none is valid. Other networks'
// attachments are never touched. GC goes on past failures and reports them
// all.
func (c *call) gc(ctx context.Context) (types.Result, error) {
	valid := map[string]bool{}
	validMasq := map[string]bool{}
	validNode := map[string]bool{}
	for _, a := range c.conf.ValidAttachments {
		valid[a.ContainerID+"/"+a.IfName] = true
		validMasq[nat.StoredOwner(a.ContainerID+"/"+a.IfName)] = true
		validNode[nat.NodeOwner(c.conf.Name, a.ContainerID+"/"+a.IfName)] = true
	}
	// nftables first: it asks IPAM which addresses valid attachments
	// hold, and IPAM's own GC must not have changed that yet. Recorded
	// attachments go first, each under its record's lock, as DEL does;
	// the set-wide sweeps then take what has no record.
	errs := c.gcRecorded(ctx, valid)
	errs = append(errs, c.gcMasq(ctx, validMasq)...)
	errs = append(errs, c.gcNodeElements(ctx, validNode)...)
	errs = append(errs, c.gcPolicy(ctx, validNode)...)
	if err := c.ipam.GC(ctx); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.gcVeths(valid)...)
	errs = append(errs, c.gcIfbs()...) // after the veths: theirs are orphans now
	errs = append(errs, c.gcNodeState(valid)...)
	if len(errs) > 0 {
		return nil, cnierr.Wrap(errors.Join(errs...), cnierr.IOFailure, "GC of network %s was incomplete", c.conf.Name)
	}
	return nil, nil
}

// gcMasq removes masquerade elements no valid attachment owns. An element
// whose address IPAM holds for a valid attachment is kept whatever its
// comment says: an element re-added for a reused address keeps the comment
// of its first owner (nftables has no exclusive element add).
func (c *call) gcMasq(ctx context.Context, valid map[string]bool) []error {
	elems, err := nat.ListMasq(c.conf.Name)
	if err != nil {
		return []error{err}
	}
	heldByValid, err := c.ipam.HeldByValid(ctx)
	if err != nil {
		return []error{err}
	}
	var stale []netip.Addr
	for _, e := range elems {
		if !valid[e.Owner] && !heldByValid[e.Addr] {
			c.log.Info("GC: removing masquerade element", "addr", e.Addr, "owner", e.Owner)
			stale = append(stale, e.Addr)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	if err := nat.DelMasq(nat.Network{Name: c.conf.Name}, stale); err != nil {
		return []error{err}
	}
	return nil
}

func (c *call) gcVeths(valid map[string]bool) []error {
	ports, err := bridge.Ports(c.conf.Bridge)
	if err != nil {
		if errors.Is(err, bridge.ErrNotFound) {
			return nil
		}
		return []error{err}
	}
	prefix := "pier:" + c.conf.Name + ":"
	var errs []error
	for _, p := range ports {
		rest, ok := strings.CutPrefix(p.Alias, prefix)
		if !ok {
			continue // not ours, or another network's
		}
		containerID, ifName, ok := strings.Cut(rest, ":")
		if !ok || valid[containerID+"/"+ifName] {
			continue
		}
		c.log.Info("GC: deleting veth", "veth", p.Name, "owner", rest)
		if err := veth.DeleteHostEnd(p.Name); err != nil {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", p.Name, err))
		}
	}
	return errs
}
