// Package ipamcni is the CNI glue of the standalone pier-ipam plugin: skel
// callbacks that parse the config, call package ipam and map errors to CNI
// codes. It is apart from package ipam so that the allocator's other users
// (pierd) do not link skel.
package ipamcni

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
)

// Funcs returns the skel callbacks of the standalone pier-ipam plugin.
// Each call gets no deadline of its own: the store bounds its lock wait
// (store.DefaultTimeout) below a runtime's usual CNI timeout.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig) error {
				res, err := ipam.Add(context.Background(), conf, ownerOf(args))
				if err != nil {
					return err
				}
				return types.PrintResult(res, conf.CNIVersion)
			})
		},
		Del: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig) error {
				return ipam.Del(context.Background(), conf, ownerOf(args))
			})
		},
		Check: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig) error {
				_, err := ipam.Check(context.Background(), conf, ownerOf(args))
				return err
			})
		},
		GC: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig) error {
				return ipam.GC(context.Background(), conf, conf.ValidAttachments)
			})
		},
		Status: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig) error {
				return ipam.Status(context.Background(), conf)
			})
		},
	}
}

// withConf parses the config and runs fn, turning any error into the
// *types.Error skel prints. It returns a plain nil on success: a nil
// *types.Error in an error interface would read as a failure.
func withConf(args *skel.CmdArgs, fn func(*config.IPAMConfig) error) error {
	conf, err := config.LoadIPAM(args.StdinData, args.Args)
	if err == nil {
		err = fn(conf)
	}
	if err != nil {
		return cnierr.ToCNI(err)
	}
	return nil
}

func ownerOf(args *skel.CmdArgs) ipam.Owner {
	return ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
}
