// Package plugin is the `pier` CNI plugin: it turns one CNI call (ADD, DEL,
// CHECK, STATUS, GC) into the steps that build, verify or remove one
// container's attachment to a node bridge. Each verb lives in its own file and
// reads top to bottom; the kernel work is done over netlink by one package
// per job (internal/bridge, veth, container, shaping, sysctl) and in
// nftables by internal/nat; addresses come from internal/ipam or a
// delegated IPAM plugin.
//
// The plugin process runs in the node's network namespace: the bridge, the
// host end of the veth and the nftables table are created in the current
// namespace, the container's interface in CNI_NETNS.
package plugin

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipam/ipamcni"
	"github.com/pier-cni/pier/internal/nodelock"
)

// callTimeout bounds one CNI call. Runtimes give a plugin minutes at most;
// IPAM store locks and delegated plugins are bounded by this deadline.
const callTimeout = 60 * time.Second

// Plugin is the `pier` plugin. It holds no state between calls: every call is
// a new process.
type Plugin struct {
	// openAllocator returns the allocator a pier-ipam config names, and
	// what to close when the call ends.
	openAllocator func(*config.IPAMConfig) (ipam.Allocator, io.Closer)
	// nodeLock is the node's lock file (package nodelock), which bridge
	// setups and teardowns of every network take.
	nodeLock string
}

// New returns the plugin, whose pier-ipam configs are served by the local
// store or, with ipam.daemonSocket, by pierd.
func New() *Plugin { return &Plugin{openAllocator: ipamcni.Open, nodeLock: nodelock.DefaultPath()} }

// Funcs wires the verbs for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return p.serve("ADD", a, (*call).add) },
		Del:    func(a *skel.CmdArgs) error { return p.serve("DEL", a, (*call).del) },
		Check:  func(a *skel.CmdArgs) error { return p.serve("CHECK", a, (*call).check) },
		Status: func(a *skel.CmdArgs) error { return p.serve("STATUS", a, (*call).status) },
		GC:     func(a *skel.CmdArgs) error { return p.serve("GC", a, (*call).gc) },
	}
}

// call is one CNI invocation: its arguments, decoded config, IPAM backend and
// scoped logger.
type call struct {
	args     *skel.CmdArgs
	conf     *config.NetConf
	ipam     ipamBackend
	log      *slog.Logger
	nodeLock string
}

// serve is the CNI boundary: it runs the verb, prints a result if there is
// one, and turns any error into a *types.Error with a code. Nothing but the
// result or the error reaches stdout.
func (p *Plugin) serve(verb string, args *skel.CmdArgs, run func(*call, context.Context) (types.Result, error)) error {
	result, conf, err := p.run(verb, args, run)
	if err != nil {
		return cnierr.ToCNI(err)
	}
	if result == nil {
		return nil
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// run loads the config, opens the call's IPAM and logger and runs the
// verb. It returns the config too, for the result's version.
func (p *Plugin) run(verb string, args *skel.CmdArgs, run func(*call, context.Context) (types.Result, error)) (types.Result, *config.NetConf, error) {
	conf, err := config.LoadNetConf(args.StdinData, args.Args)
	if err != nil {
		return nil, nil, err
	}
	log, logCloser := newCallLogger(verb, args, conf.LogFile, conf.LogLevel)
	defer logCloser.Close() //nolint:errcheck // a log file that fails to close loses log lines, not state

	backend, ipamCloser, err := p.newIPAM(conf, args)
	if err != nil {
		log.Error("invalid IPAM config", "err", err)
		return nil, conf, err
	}
	defer ipamCloser.Close() //nolint:errcheck // closing a client connection loses nothing
	c := &call{args: args, conf: conf, ipam: backend, log: log, nodeLock: p.nodeLock}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()

	start := time.Now()
	result, err := run(c, ctx)
	if err != nil {
		log.Error(verb+" failed", "err", err, "took", time.Since(start))
		return nil, conf, err
	}
	log.Info(verb+" done", "took", time.Since(start))
	return result, conf, nil
}
