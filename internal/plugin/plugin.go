// Package plugin is the `pier` CNI plugin: it turns one CNI call (ADD, DEL,
// CHECK, STATUS, GC) into the steps that build, verify or remove one
// container's attachment to a node bridge. Each verb lives in its own file and
// reads top to bottom; the kernel work is done by internal/bridge (netlink)
// and internal/nat (nftables), addresses come from internal/ipam or a
// delegated IPAM plugin.
//
// The plugin process runs in the node's network namespace: the bridge, the
// host end of the veth and the nftables table are created in the current
// namespace, the container's interface in CNI_NETNS.
package plugin

import (
	"context"
	"log/slog"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
)

// callTimeout bounds one CNI call. Runtimes give a plugin minutes at most;
// IPAM store locks and delegated plugins are bounded by this deadline.
const callTimeout = 60 * time.Second

// Plugin is the `pier` plugin. It holds no state between calls: every call is
// a new process.
type Plugin struct{}

// New returns the plugin.
func New() *Plugin { return &Plugin{} }

// Funcs wires the verbs for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return serve("ADD", a, (*call).add) },
		Del:    func(a *skel.CmdArgs) error { return serve("DEL", a, (*call).del) },
		Check:  func(a *skel.CmdArgs) error { return serve("CHECK", a, (*call).check) },
		Status: func(a *skel.CmdArgs) error { return serve("STATUS", a, (*call).status) },
		GC:     func(a *skel.CmdArgs) error { return serve("GC", a, (*call).gc) },
	}
}

// call is one CNI invocation: its arguments, decoded config, IPAM backend and
// scoped logger.
type call struct {
	args *skel.CmdArgs
	conf *config.NetConf
	ipam ipamBackend
	log  *slog.Logger
}

// serve is the CNI boundary: it loads the config, runs the verb, prints a
// result if there is one, and turns any error into a *types.Error with a
// code. Nothing but the result or the error reaches stdout.
func serve(verb string, args *skel.CmdArgs, run func(*call, context.Context) (types.Result, error)) error {
	conf, err := config.LoadNetConf(args.StdinData, args.Args)
	if err != nil {
		return cnierr.ToCNI(err)
	}
	log, closer := newCallLogger(verb, args, conf.LogFile, conf.LogLevel)
	defer closer.Close() //nolint:errcheck // a log file that fails to close loses log lines, not state

	backend, err := newIPAM(conf, args)
	if err != nil {
		log.Error("invalid IPAM config", "err", err)
		return cnierr.ToCNI(err)
	}
	c := &call{args: args, conf: conf, ipam: backend, log: log}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()

	start := time.Now()
	result, err := run(c, ctx)
	if err != nil {
		log.Error(verb+" failed", "err", err, "took", time.Since(start))
		return cnierr.ToCNI(err)
	}
	log.Info(verb+" done", "took", time.Since(start))
	if result == nil {
		return nil
	}
	return types.PrintResult(result, conf.CNIVersion)
}
