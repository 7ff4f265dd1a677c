package plugin

import (
	"io"
	"log/slog"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/pier-cni/pier/internal/config"
)

// Log files rotate like the classic plugins' local-filesystem logger: a few
// megabytes each, a handful kept, so a busy node's log never fills a disk.
const (
	logMaxSizeMB  = 10
	logMaxBackups = 5
	logMaxAgeDays = 28
)

// newCallLogger returns the logger for one CNI call, scoped with the command
// and the attachment it is about. Without a "logFile" it discards: a plugin's
// stdout belongs to the result and its stderr to the runtime's error text.
func newCallLogger(verb string, args *skel.CmdArgs, logFile, logLevel string) (*slog.Logger, io.Closer) {
	if logFile == "" {
		return slog.New(slog.DiscardHandler), io.NopCloser(nil)
	}
	level, err := config.ParseLogLevel(logLevel)
	if err != nil {
		level = slog.LevelInfo // validated earlier; unreachable for a loaded config
	}
	w := &lumberjack.Logger{Filename: logFile, MaxSize: logMaxSizeMB, MaxBackups: logMaxBackups, MaxAge: logMaxAgeDays}
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(h).With("cmd", verb, "container", args.ContainerID, "netns", args.Netns, "ifname", args.IfName), w
}

// stepTimer returns a function that logs, at debug level, how long the
// call took since the previous step (or since stepTimer), naming the step
// just done: "logLevel": "debug" profiles a call in the plugin's own log.
func (c *call) stepTimer() func(step string) {
	last := time.Now()
	return func(step string) {
		now := time.Now()
		c.log.Debug("step done", "step", step, "took", now.Sub(last))
		last = now
	}
}
