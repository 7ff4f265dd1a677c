// Package ipamcni is the CNI glue of the standalone pier-ipam plugin: skel
// callbacks that parse the config, call the allocator it names — the local
// store (ipam.Local) or pierd (daemon mode, ipam.daemonSocket: lite.Client)
// — through ipam.Allocator, and map errors to CNI codes. It is apart from
// package ipam so that the allocator's other users (pierd) do not link
// skel.
package ipamcni

import (
	"context"
	"io"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// Funcs returns the skel callbacks of the standalone pier-ipam plugin.
// Each call gets no deadline of its own: in local mode the store bounds its
// lock wait (store.DefaultTimeout), in daemon mode the client bounds the
// connect and each call (lite.ConnectTimeout, lite.CallTimeout), all below
// a runtime's usual CNI timeout.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a ipam.Allocator) error {
				res, err := ipam.AllocateResult(context.Background(), a, conf, ownerOf(args))
				if err != nil {
					return err
				}
				return types.PrintResult(res, conf.CNIVersion)
			})
		},
		Del: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a ipam.Allocator) error {
				_, err := a.Release(context.Background(), conf, ownerOf(args))
				return err
			})
		},
		Check: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a ipam.Allocator) error {
				_, err := a.Check(context.Background(), conf, ownerOf(args))
				return err
			})
		},
		GC: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a ipam.Allocator) error {
				_, err := a.GC(context.Background(), conf, conf.ValidAttachments)
				return err
			})
		},
		Status: func(args *skel.CmdArgs) error {
			return withConf(args, func(conf *config.IPAMConfig, a ipam.Allocator) error {
				return a.Status(context.Background(), conf)
			})
		},
	}
}

// withConf parses the config, picks the allocator and runs fn, turning any
// error into the *types.Error skel prints. It returns a plain nil on
// success: a nil *types.Error in an error interface would read as a failure.
func withConf(args *skel.CmdArgs, fn func(*config.IPAMConfig, ipam.Allocator) error) error {
	conf, err := config.LoadIPAM(args.StdinData, args.Args)
	if err == nil {
		a, closer := Open(conf)
		defer closer.Close() //nolint:errcheck // closing a client connection loses nothing
		err = fn(conf, a)
	}
	if err != nil {
		return cnierr.ToCNI(err)
	}
	return nil
}

// Open returns the allocator a validated pier-ipam config names: pierd at
// its daemonSocket (connecting at once, so that pierd sets the connection
// up while the caller does other work), else the local store under its
// dataDir. Close the closer when done.
func Open(conf *config.IPAMConfig) (ipam.Allocator, io.Closer) {
	if conf.DaemonSocket != "" {
		c := lite.New(conf.DaemonSocket)
		c.Warm()
		return c, c
	}
	return ipam.NewLocal(conf.DataDir, ipam.LocalOptions{}), io.NopCloser(nil)
}

func ownerOf(args *skel.CmdArgs) ipam.Owner {
	return ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
}
