package plugin

import (
	"fmt"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/shaping"
	"github.com/pier-cni/pier/internal/veth"
)

// This file holds the attachment's bandwidth limits (package shaping):
// applied on ADD after the veth, checked by CHECK, their ifb deleted by DEL,
// and ifbs left without their veth deleted by GC.

// limits converts the config's bandwidth to the shaper's; zero when none.
func (c *call) limits() shaping.Limits {
	b := c.conf.Bandwidth
	if b == nil {
		return shaping.Limits{}
	}
	return shaping.Limits{IngressRate: b.IngressRate, IngressBurst: b.IngressBurst, EgressRate: b.EgressRate, EgressBurst: b.EgressBurst}
}

// applyLimits shapes the container's traffic and returns the ifb device
// the egress limit uses (nil without one), for the result.
func (c *call) applyLimits(pair *veth.Pair, undo *undoStack) (*current.Interface, error) {
	lim := c.limits()
	if lim.IngressRate == 0 && lim.EgressRate == 0 {
		return nil, nil
	}
	ifb, err := shaping.Apply(pair.Host, lim)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "cannot apply bandwidth limits")
	}
	name := pair.Host.Attrs().Name
	undo.push("remove bandwidth limits of "+name, func() error { return shaping.Remove(name) })
	if ifb == nil {
		return nil, nil
	}
	return &current.Interface{Name: ifb.Attrs().Name, Mac: ifb.Attrs().HardwareAddr.String()}, nil
}

// removeLimits deletes the ifb of the egress limit (DEL policy: a missing
// one is fine).
func (c *call) removeLimits() error {
	if c.limits().EgressRate == 0 {
		return nil
	}
	return shaping.Remove(veth.HostName(c.args.ContainerID, c.args.IfName))
}

// checkLimits verifies the attachment's bandwidth limits: the tbf on the
// host veth and on the ifb of the egress limit.
func (c *call) checkLimits() []error {
	lim := c.limits()
	if lim == (shaping.Limits{}) {
		return nil
	}
	return shaping.Check(veth.HostName(c.args.ContainerID, c.args.IfName), lim)
}

// gcIfbs deletes ifb devices whose host veth is gone.
func (c *call) gcIfbs() []error {
	names, err := shaping.OrphanIfbs()
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, name := range names {
		c.log.Info("GC: deleting ifb", "ifb", name)
		if err := shaping.DeleteIfb(name); err != nil {
			errs = append(errs, fmt.Errorf("delete ifb %s: %w", name, err))
		}
	}
	return errs
}
