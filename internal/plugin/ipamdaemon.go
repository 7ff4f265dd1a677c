package plugin

import (
	"context"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// daemonIPAM asks pierd (ipam.daemonSocket) over its socket: the same
// allocator and store as embedded mode, in another process. One connection
// serves all of a call's requests (DEL asks Held, then Del).
//
// DEL with pierd down fails with code 11 before anything is removed (Held
// is DEL's first IPAM call), like a busy store in embedded mode: the runtime
// retries DEL, as the spec requires, and nothing is released behind pierd's
// back. See README "Daemon mode" for why DEL does not queue releases.
type daemonIPAM struct {
	conf   *config.IPAMConfig
	owner  ipam.Owner
	client *lite.Client
}

// newDaemonIPAM connects to pierd at once (lite.Client.Warm): pierd sets
// the connection up while the plugin does its netlink work, so the first
// call pays one round trip instead of a connection's set-up as well.
func newDaemonIPAM(conf *config.IPAMConfig, args *skel.CmdArgs) *daemonIPAM {
	client := lite.New(conf.DaemonSocket)
	client.Warm()
	return &daemonIPAM{
		conf:   conf,
		owner:  ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName},
		client: client,
	}
}

func (d *daemonIPAM) Subnets() []netip.Prefix { return rangeSubnets(d.conf) }

func (d *daemonIPAM) Add(ctx context.Context) (*current.Result, error) {
	return d.client.Add(ctx, d.conf, d.owner)
}

func (d *daemonIPAM) Del(ctx context.Context) error { return d.client.Del(ctx, d.conf, d.owner) }

func (d *daemonIPAM) Check(ctx context.Context) error {
	_, err := d.client.Check(ctx, d.conf, d.owner)
	return err
}

func (d *daemonIPAM) GC(ctx context.Context) error {
	return d.client.GC(ctx, d.conf, d.conf.ValidAttachments)
}

func (d *daemonIPAM) Status(ctx context.Context) error { return d.client.Status(ctx, d.conf) }

func (d *daemonIPAM) Held(ctx context.Context) ([]netip.Addr, error) {
	addrs, err := d.client.Check(ctx, d.conf, d.owner)
	if cnierr.CodeOf(err) == cnierr.UnknownContainer {
		return nil, nil
	}
	return addrs, err
}

func (d *daemonIPAM) HeldByValid(ctx context.Context) (map[netip.Addr]bool, error) {
	res, err := d.client.List(ctx, d.conf)
	if err != nil {
		return nil, err
	}
	held := map[netip.Addr]bool{}
	for _, r := range res {
		if slices.Contains(d.conf.ValidAttachments, r.Owner) {
			held[r.Addr] = true
		}
	}
	return held, nil
}
