package config

import (
	"path/filepath"

	"github.com/pier-cni/pier/internal/cnierr"
)

// validateStateDir checks "stateDir", the directory of Pier's own state
// (its attachment records) for a network whose IPAM is delegated.
// A pier-ipam network keeps that state beside its reservations —
// ipam.dataDir, or pierd's state directory in daemon mode — where pierd's
// netfilter watcher finds it, so "stateDir" there is a value Pier cannot
// honour (code 2), not silently ignored.
func (n *NetConf) validateStateDir() error {
	if n.StateDir == "" {
		return nil
	}
	if n.IPAM.Type == IPAMType {
		return cnierr.New(cnierr.UnsupportedField,
			`"stateDir": %q is for networks whose IPAM is delegated; with %s, Pier's state is kept beside the reservations ("ipam.dataDir", or pierd's state directory in daemon mode)`,
			n.StateDir, IPAMType)
	}
	if !filepath.IsAbs(n.StateDir) {
		return cnierr.New(cnierr.InvalidConfig, `"stateDir": %q must be an absolute path`, n.StateDir)
	}
	n.StateDir = filepath.Clean(n.StateDir)
	return nil
}

// DelegatedStateDir is where a network whose IPAM is delegated keeps
// Pier's own state: "stateDir", or DefaultDataDir.
func (n *NetConf) DelegatedStateDir() string {
	if n.StateDir == "" {
		return DefaultDataDir
	}
	return n.StateDir
}
