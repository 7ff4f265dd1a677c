package plugin

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/delegate"
	"github.com/pier-cni/pier/internal/ipam"
)

// EmbeddedIPAM is the ipam.type served inside the plugin process, without a
// second exec. Every other type is delegated through CNI_PATH.
const EmbeddedIPAM = "pier-ipam"

// ipamBackend is what one CNI call needs from IPAM. Two kinds answer it:
//
//   - pierIPAM: pier-ipam's allocator (ipam.Allocator: the local store, or
//     pierd in daemon and cluster mode), which knows owners, so DEL and GC
//     can ask who holds what;
//   - delegatedIPAM: another IPAM plugin run from CNI_PATH, which answers
//     the CNI verbs and nothing else.
//
// A delegated plugin does not implement ipam.Allocator: the spec gives it
// no verb to list reservations or to tell what an attachment holds, and it
// reads the whole network config (its own keys, prevResult) rather than
// the range sets an Allocator is given, so Held and HeldByValid honestly
// answer "unknown" (nil) for it and DEL and GC fall back to the owners
// recorded in nftables comments and link aliases.
type ipamBackend interface {
	Add(ctx context.Context) (*current.Result, error)
	Del(ctx context.Context) error
	Check(ctx context.Context) error
	GC(ctx context.Context) error
	Status(ctx context.Context) error
	// Held returns the addresses the attachment holds, or nil when the
	// backend cannot tell.
	Held(ctx context.Context) ([]netip.Addr, error)
	// HeldByValid returns the addresses held for the config's valid
	// attachments (GC), or nil when the backend cannot tell.
	HeldByValid(ctx context.Context) (map[netip.Addr]bool, error)
	// Subnets returns the configured ranges' subnets, when the backend has
	// them (pier-ipam; in cluster mode, the cluster CIDR).
	Subnets() []netip.Prefix
}

// rangeSubnets lists the subnets of a pier-ipam config's ranges.
func rangeSubnets(conf *config.IPAMConfig) []netip.Prefix {
	var out []netip.Prefix
	for _, set := range conf.RangeSets {
		for _, r := range set {
			if !slices.Contains(out, r.Subnet) {
				out = append(out, r.Subnet)
			}
		}
	}
	return out
}

// newIPAM returns the call's IPAM and what to close when the call ends.
func (p *Plugin) newIPAM(conf *config.NetConf, args *skel.CmdArgs) (ipamBackend, io.Closer, error) {
	if conf.IPAM.Type != EmbeddedIPAM {
		return &delegatedIPAM{pluginType: conf.IPAM.Type, stdin: args.StdinData}, io.NopCloser(nil), nil
	}
	ic, err := config.LoadIPAM(args.StdinData, args.Args)
	if err != nil {
		return nil, nil, err
	}
	alloc, closer := p.openAllocator(ic)
	return &pierIPAM{alloc: alloc, conf: ic, owner: ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}}, closer, nil
}

// pierIPAM is pier-ipam's allocator serving one attachment.
type pierIPAM struct {
	alloc ipam.Allocator
	conf  *config.IPAMConfig
	owner ipam.Owner
}

func (p *pierIPAM) Add(ctx context.Context) (*current.Result, error) {
	return ipam.AllocateResult(ctx, p.alloc, p.conf, p.owner)
}

func (p *pierIPAM) Del(ctx context.Context) error {
	_, err := p.alloc.Release(ctx, p.conf, p.owner)
	return err
}

func (p *pierIPAM) Check(ctx context.Context) error {
	_, err := p.alloc.Check(ctx, p.conf, p.owner)
	return err
}

func (p *pierIPAM) GC(ctx context.Context) error {
	_, err := p.alloc.GC(ctx, p.conf, p.conf.ValidAttachments)
	return err
}

func (p *pierIPAM) Status(ctx context.Context) error { return p.alloc.Status(ctx, p.conf) }

// Held is Check where holding nothing is an empty answer, not an error:
// DEL's first question. With pierd down it fails with code 11 before
// anything is removed, like a busy store in local mode: the runtime
// retries DEL, and nothing is released behind the allocator's back.
func (p *pierIPAM) Held(ctx context.Context) ([]netip.Addr, error) {
	addrs, err := p.alloc.Check(ctx, p.conf, p.owner)
	if cnierr.CodeOf(err) == cnierr.UnknownContainer {
		return nil, nil
	}
	return addrs, err
}

func (p *pierIPAM) HeldByValid(ctx context.Context) (map[netip.Addr]bool, error) {
	res, err := p.alloc.List(ctx, p.conf)
	if err != nil {
		return nil, err
	}
	held := map[netip.Addr]bool{}
	for _, r := range res {
		if r.Problem == "" && slices.Contains(p.conf.ValidAttachments, r.Owner) {
			held[r.Addr] = true
		}
	}
	return held, nil
}

func (p *pierIPAM) Subnets() []netip.Prefix { return rangeSubnets(p.conf) }

// delegatedIPAM runs another IPAM plugin from CNI_PATH with the same config,
// as the spec's delegation section says, for every verb.
type delegatedIPAM struct {
	pluginType string
	stdin      []byte
}

func (d *delegatedIPAM) Add(ctx context.Context) (*current.Result, error) {
	r, err := delegate.Add(ctx, d.pluginType, d.stdin)
	if err != nil {
		return nil, delegationError(d.pluginType, "ADD", err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "IPAM plugin %q returned a result pier cannot read", d.pluginType)
	}
	return res, nil
}

func (d *delegatedIPAM) Del(ctx context.Context) error {
	return delegationError(d.pluginType, "DEL", delegate.Run(ctx, "DEL", d.pluginType, d.stdin))
}

func (d *delegatedIPAM) Check(ctx context.Context) error {
	return delegationError(d.pluginType, "CHECK", delegate.Run(ctx, "CHECK", d.pluginType, d.stdin))
}

func (d *delegatedIPAM) GC(ctx context.Context) error {
	return delegationError(d.pluginType, "GC", delegate.Run(ctx, "GC", d.pluginType, d.stdin))
}

func (d *delegatedIPAM) Status(ctx context.Context) error {
	return delegationError(d.pluginType, "STATUS", delegate.Run(ctx, "STATUS", d.pluginType, d.stdin))
}

func (d *delegatedIPAM) Held(context.Context) ([]netip.Addr, error) { return nil, nil }

func (d *delegatedIPAM) HeldByValid(context.Context) (map[netip.Addr]bool, error) { return nil, nil }

func (d *delegatedIPAM) Subnets() []netip.Prefix { return nil }

// delegationError keeps the delegated plugin's own code (it knows best) and
// says which plugin and verb produced it.
func delegationError(pluginType, verb string, err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return &types.Error{Code: te.Code, Msg: "IPAM plugin " + pluginType + " " + verb + ": " + te.Msg, Details: te.Details}
	}
	return cnierr.Wrap(err, cnierr.IOFailure, "IPAM plugin %s %s", pluginType, verb)
}
