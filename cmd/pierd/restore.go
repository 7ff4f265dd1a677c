package main

import (
	"context"
	"flag"
	"log/slog"
	"time"

	"github.com/pier-cni/pier/internal/nodelock"
	"github.com/pier-cni/pier/internal/nodestate"
)

// restoreFlags are the flags of the netfilter watcher (nodestate.Watcher),
// which puts Pier's nftables tables and host accepts back when a flush or
// a firewall reload removes them.
type restoreFlags struct {
	interval *time.Duration
}

func restoreFlagSet(fs *flag.FlagSet) *restoreFlags {
	return &restoreFlags{
		interval: fs.Duration("restore-interval", 10*time.Second, "how often the netfilter watcher looks besides nftables' notifications (iptables-legacy notifies nothing); 0 turns the watcher off"),
	}
}

// start runs the watcher until ctx ends, over the records of the networks
// under dataDir (pier-ipam networks kept there) and under the state
// directory beside the socket (daemon-mode networks), with resyncs run
// after a flush (by name). The returned function waits for it to stop.
func (r *restoreFlags) start(ctx context.Context, dataDir, socket string, log *slog.Logger, resyncs map[string]func(context.Context) error) (wait func()) {
	if *r.interval <= 0 {
		return func() {}
	}
	w := &nodestate.Watcher{
		Roots:    []string{dataDir, nodestate.DaemonRoot(socket)},
		Lock:     nodelock.DefaultPath(),
		Interval: *r.interval,
		Log:      log.With("component", "netfilter-watcher"),
	}
	for name, fn := range resyncs {
		w.Register(name, fn)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(ctx); err != nil {
			w.Log.Error("netfilter watcher stopped", "err", err)
		}
	}()
	return func() { <-done }
}
