package plugin

import (
	"context"
	"errors"
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

// ipamBackend is what the plugin needs from an IPAM: the embedded allocator,
// pierd (daemon mode) or a delegated plugin answer the same questions.
type ipamBackend interface {
	Add(ctx context.Context) (*current.Result, error)
	Del(ctx context.Context) error
	Check(ctx context.Context) error
	GC(ctx context.Context) error
	Status(ctx context.Context) error
	// Held returns the addresses the attachment holds, when the backend can
	// tell (the embedded one can; a delegated plugin cannot be asked).
	Held(ctx context.Context) ([]netip.Addr, error)
	// HeldByValid returns the addresses held for the config's valid
	// attachments (GC), when the backend can tell.
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

func newIPAM(conf *config.NetConf, args *skel.CmdArgs) (ipamBackend, error) {
	if conf.IPAM.Type != EmbeddedIPAM {
		return &delegatedIPAM{pluginType: conf.IPAM.Type, stdin: args.StdinData}, nil
	}
	ic, err := config.LoadIPAM(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	if ic.DaemonSocket != "" {
		return newDaemonIPAM(ic, args), nil
	}
	return &embeddedIPAM{conf: ic, owner: ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}}, nil
}

type embeddedIPAM struct {
	conf  *config.IPAMConfig
	owner ipam.Owner
}

func (e *embeddedIPAM) Add(ctx context.Context) (*current.Result, error) {
	return ipam.Add(ctx, e.conf, e.owner)
}

func (e *embeddedIPAM) Del(ctx context.Context) error { return ipam.Del(ctx, e.conf, e.owner) }

func (e *embeddedIPAM) Check(ctx context.Context) error {
	_, err := ipam.Check(ctx, e.conf, e.owner)
	return err
}

func (e *embeddedIPAM) GC(ctx context.Context) error {
	return ipam.GC(ctx, e.conf, e.conf.ValidAttachments)
}

func (e *embeddedIPAM) Status(ctx context.Context) error { return ipam.Status(ctx, e.conf) }

func (e *embeddedIPAM) Held(ctx context.Context) ([]netip.Addr, error) {
	addrs, err := ipam.Check(ctx, e.conf, e.owner)
	if cnierr.CodeOf(err) == cnierr.UnknownContainer {
		return nil, nil
	}
	return addrs, err
}

func (e *embeddedIPAM) HeldByValid(ctx context.Context) (map[netip.Addr]bool, error) {
	res, err := ipam.List(ctx, e.conf)
	if err != nil {
		return nil, err
	}
	held := map[netip.Addr]bool{}
	for _, r := range res {
		if slices.Contains(e.conf.ValidAttachments, r.Owner) {
			held[r.Addr] = true
		}
	}
	return held, nil
}

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

func (e *embeddedIPAM) Subnets() []netip.Prefix { return rangeSubnets(e.conf) }

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
