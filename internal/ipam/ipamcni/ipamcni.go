// Package ipamcni is the CNI glue of the standalone pier-ipam plugin: skel
// callbacks that parse the config, call package ipam (local mode) or pierd
// (daemon mode, ipam.daemonSocket) and map errors to CNI codes. It is apart
// from package ipam so that the allocator's other users (pierd) do not link
// skel.
package ipamcni

import (
	"context"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// allocator is package ipam's API as this plugin uses it; local mode runs
// it in this process, daemon mode asks pierd, with the same semantics.
type allocator interface {
	Add(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) (*current.Result, error)
	Del(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) error
	Check(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) ([]netip.Addr, error)
	GC(ctx context.Context, conf *config.IPAMConfig, valid []ipam.Owner) error
	Status(ctx context.Context, conf *config.IPAMConfig) error
}

// local is package ipam over the local store.
type local struct{}

func (local) Add(ctx context.Context, conf *config.IPAMConfig, o ipam.Owner) (*current.Result, error) {
	return ipam.Add(ctx, conf, o)
}

func (local) Del(ctx context.Context, conf *config.IPAMConfig, o ipam.Owner) error {
	return ipam.Del(ctx, conf, o)
}

func (local) Check(ctx context.Context, conf *config.IPAMConfig, o ipam.Owner) ([]netip.Addr, error) {
	return ipam.Check(ctx, conf, o)
}

func (local) GC(ctx context.Context, conf *config.IPAMConfig, valid []ipam.Owner) error {
	return ipam.GC(ctx, conf, valid)
}

func (local) Status(ctx context.Context, conf *config.IPAMConfig) error {
	return ipam.Status(ctx, conf)
}

// Funcs returns the skel callbacks of the standalone pier-ipam plugin.
// Each call gets no deadline of its own: in local mode the store bounds its
// lock wait (store.DefaultTimeout), in daemon mode the client bounds the
// connect and each call (lite.ConnectTimeout, lite.CallTimeout), all below
// a runtime's usual CNI timeout.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a allocator) error {
				res, err := a.Add(context.Background(), conf, ownerOf(args))
				if err != nil {
					return err
				}
				return types.PrintResult(res, conf.CNIVersion)
			})
		},
		Del: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a allocator) error {
				return a.Del(context.Background(), conf, ownerOf(args))
			})
		},
		Check: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a allocator) error {
				_, err := a.Check(context.Background(), conf, ownerOf(args))
				return err
			})
		},
		GC: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a allocator) error {
				return a.GC(context.Background(), conf, conf.ValidAttachments)
			})
		},
		Status: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a allocator) error {
				return a.Status(context.Background(), conf)
			})
		},
	}
}

// withConf parses the config, picks the allocator and runs fn, turning any
// error into the *types.Error skel prints. It returns a plain nil on
// success: a nil *types.Error in an error interface would read as a failure.
func withConf(args *skel.CmdArgs, fn func(*config.IPAMConfig, allocator) error) error {
	conf, err := config.LoadIPAM(args.StdinData, args.Args)
	if err == nil {
		var a allocator = local{}
		if conf.DaemonSocket != "" {
			c := lite.New(conf.DaemonSocket)
			defer c.Close() //nolint:errcheck // closing a client connection loses nothing
			a = c
		}
		err = fn(conf, a)
	}
	if err != nil {
		return cnierr.ToCNI(err)
	}
	return nil
}

func ownerOf(args *skel.CmdArgs) ipam.Owner {
	return ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
}
