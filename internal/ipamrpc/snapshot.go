package ipamrpc

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// PoolSnapshot returns the pool usage of every network whose ranges pierd
// recorded under dataDir, keyed by network, for metrics. It takes no lock
// that a call takes (neither a network's turn in pierd nor its store's
// flock): the ranges come from the records pierd keeps of them, the use
// from a lock-free listing of each store (store.File.Snapshot), so a
// scrape never makes an ADD wait, nor waits for one. The counts may be a
// moment behind a change in progress.
func PoolSnapshot(dataDir string, log *slog.Logger) (map[string][]PoolUsage, error) {
	recorded, err := readRemembered(dataDir, log)
	if err != nil {
		return nil, err
	}
	out := map[string][]PoolUsage{}
	for name, sets := range recorded {
		st := &store.File{Dir: filepath.Join(dataDir, name), BootIDPath: store.DefaultBootIDPath}
		addrs, err := st.Snapshot()
		if err != nil {
			return nil, fmt.Errorf("network %q: %w", name, err)
		}
		res := make([]ipam.Reservation, len(addrs))
		for i, a := range addrs {
			res[i] = ipam.Reservation{Addr: a}
		}
		out[name] = pools(poolUsage(sets, res))
	}
	return out, nil
}

// readRemembered reads the range sets recorded for each network under
// dataDir (see Server.remember); a record that does not parse is logged
// and skipped.
func readRemembered(dataDir string, log *slog.Logger) (map[string][]config.RangeSet, error) {
	dir := filepath.Join(dataDir, stateDir, "networks")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]config.RangeSet{}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || config.ValidateNetworkName(name) != nil {
			continue
		}
		sets, err := readRangeSets(filepath.Join(dir, e.Name()), name)
		if err != nil {
			log.Warn("ignoring recorded ranges", "network", name, "err", err)
			continue
		}
		out[name] = sets
	}
	return out, nil
}

func readRangeSets(path, name string) ([]config.RangeSet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc [][]rangeJSON
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	var specs [][]config.RangeSpec
	for _, set := range doc {
		var ss []config.RangeSpec
		for _, r := range set {
			ss = append(ss, config.RangeSpec(r))
		}
		specs = append(specs, ss)
	}
	return config.ParseRangeSets(name, specs)
}
