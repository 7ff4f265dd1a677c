package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// This file holds the attachment's entry into Kubernetes network policy
// ("networkPolicy": true): pierd keeps every policy object in table inet
// pier; the plugin only adds, on ADD, two elements per address leading
// to the pod's chains (or, until pierd has made them, to a chain that
// drops everything), in the same transaction as masquerade and host
// ports, and removes them on DEL.

// policyAttachment is the attachment's policy elements, nil when the
// network does not enforce policies.
func (c *call) policyAttachment(addrs []netip.Addr) *dataplane.Attachment {
	if !c.conf.NetworkPolicy {
		return nil
	}
	a := &dataplane.Attachment{Addrs: addrs, Owner: c.policyOwner()}
	if c.conf.PodNamespace != "" && c.conf.PodName != "" {
		a.Pod = dataplane.Ref{Namespace: c.conf.PodNamespace, Name: c.conf.PodName}
	}
	return a
}

// policyOwner is the policy elements' comment: the node-wide owner form,
// which names the network first so GC can pick its own network's.
func (c *call) policyOwner() string { return nat.NodeOwner(c.conf.Name, c.owner()) }

// logPolicy says where an ADD's addresses lead, since a pod whose traffic
// is dropped for want of classification is otherwise a mystery.
func (c *call) logPolicy(a *dataplane.Attachment) {
	if a == nil {
		return
	}
	if a.Unclassified() {
		c.log.Warn("network policy: the pod is not classified yet (pierd has not made its chains, or CNI_ARGS lacks K8S_POD_NAMESPACE/K8S_POD_NAME): its traffic is dropped until pierd knows it",
			"pod", a.Pod.String())
		return
	}
	c.log.Debug("network policy: addresses lead to the pod's chains", "pod", a.Pod.String())
}

// delPolicy removes the policy elements of addresses this attachment
// still holds in IPAM: nobody else can have them, so no ownership check.
func (c *call) delPolicy(addrs []netip.Addr, opts ...dataplane.Option) error {
	if !c.conf.NetworkPolicy || len(addrs) == 0 {
		return nil
	}
	if err := dataplane.RemoveElements(addrs, opts...); err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot remove the network policy elements of %s", c.owner())
	}
	return nil
}

// delOwnPolicy removes the policy elements of addrs that name this
// attachment as their owner.
func (c *call) delOwnPolicy(addrs []netip.Addr) error {
	if !c.conf.NetworkPolicy || len(addrs) == 0 {
		return nil
	}
	els, err := dataplane.ListElements()
	if err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot read the network policy elements")
	}
	var mine []netip.Addr
	for _, e := range els {
		if e.Owner == c.policyOwner() && slices.Contains(addrs, e.Addr) {
			mine = append(mine, e.Addr)
		}
	}
	return c.delPolicy(mine)
}

// gcPolicy removes this network's policy elements that no valid
// attachment owns, keeping those whose address IPAM holds for one.
func (c *call) gcPolicy(ctx context.Context, valid map[string]bool) []error {
	if !c.conf.NetworkPolicy {
		return nil
	}
	els, err := dataplane.ListElements()
	if err != nil || len(els) == 0 {
		return errorList(err)
	}
	heldByValid, err := c.ipam.HeldByValid(ctx)
	if err != nil {
		return []error{err}
	}
	prefix := c.conf.Name + "/"
	var stale []netip.Addr
	for _, e := range els {
		if strings.HasPrefix(e.Owner, prefix) && !valid[e.Owner] && !heldByValid[e.Addr] && !slices.Contains(stale, e.Addr) {
			c.log.Info("GC: removing network policy elements", "addr", e.Addr, "owner", e.Owner)
			stale = append(stale, e.Addr)
		}
	}
	return errorList(dataplane.RemoveElements(stale))
}

// checkPolicy reports addresses without their two policy elements.
func (c *call) checkPolicy(addrs []netip.Addr) []error {
	if !c.conf.NetworkPolicy || len(addrs) == 0 {
		return nil
	}
	els, err := dataplane.ListElements()
	if err != nil {
		return []error{err}
	}
	var problems []error
	for _, a := range addrs {
		for _, d := range []dataplane.Direction{dataplane.Ingress, dataplane.Egress} {
			if !slices.ContainsFunc(els, func(e dataplane.Element) bool { return e.Addr == a && e.Dir == d }) {
				problems = append(problems, fmt.Errorf("network policy: %s has no %s element (table inet %s)", a, d, nat.TableName))
			}
		}
	}
	return problems
}

func errorList(err error) []error {
	if err == nil {
		return nil
	}
	return []error{err}
}
