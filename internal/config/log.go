package config

import (
	"log/slog"
	"strings"

	"github.com/pier-cni/pier/internal/cnierr"
)

// ParseLogLevel maps the "logLevel" key to a slog level.
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, cnierr.New(cnierr.InvalidConfig, `"logLevel": %q is not one of debug, info, warn, error`, s)
}
