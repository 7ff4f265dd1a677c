package ipamrpc

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
)

// stateDir holds the server's own bookkeeping under the data dir. Its name
// starts with a dot, which no network name can, so it never collides with a
// network's store.
const stateDir = ".pierd"

// catalog is the range sets each network was last served with, in memory
// and on disk (best effort: only reporting depends on it).
type catalog struct {
	dir string
	log *slog.Logger

	mu   sync.Mutex // guards sets
	sets map[string][]config.RangeSet
}

// openCatalog reads the recorded ranges of every network (readRemembered:
// a record that does not parse any more is skipped, and the next request
// rewrites it).
func openCatalog(dataDir string, log *slog.Logger) (*catalog, error) {
	c := &catalog{dir: filepath.Join(dataDir, stateDir, "networks"), log: log, sets: map[string][]config.RangeSet{}}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create pierd state directory: %w", err)
	}
	recorded, err := readRemembered(dataDir, log)
	if err != nil {
		log.Warn("cannot read recorded network ranges", "err", err)
		return c, nil
	}
	c.sets = recorded
	return c, nil
}

// names returns the networks whose ranges are known.
func (c *catalog) names() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name := range c.sets {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// conf returns network name as an allocator's config: its last ranges,
// or none when unknown.
func (c *catalog) conf(name string) *config.IPAMConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &config.IPAMConfig{Type: config.IPAMType, Name: name, RangeSets: c.sets[name]}
}

// remember records sets as the network's ranges when they changed.
func (c *catalog) remember(name string, sets []config.RangeSet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.EqualFunc(c.sets[name], sets, func(a, b config.RangeSet) bool { return slices.Equal(a, b) }) {
		return
	}
	c.sets[name] = sets
	if err := writeRemembered(filepath.Join(c.dir, name+".json"), sets); err != nil {
		c.log.Warn("cannot record the network's ranges", "network", name, "err", err)
	}
}

// rangeJSON is a remembered range on disk.
type rangeJSON struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

func writeRemembered(path string, sets []config.RangeSet) error {
	var doc [][]rangeJSON
	for _, set := range sets {
		var js []rangeJSON
		for _, r := range set {
			js = append(js, rangeJSON(r.Spec()))
		}
		doc = append(doc, js)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// poolUsage counts reservations per range of sets. A reservation with an
// unreadable record counts as used: its address is held.
func poolUsage(sets []config.RangeSet, res []ipam.Reservation) []*ipamv1.PoolUsage {
	var out []*ipamv1.PoolUsage
	type pos struct{ set, rng int }
	index := map[pos]int{}
	for i, set := range sets {
		for j, r := range set {
			index[pos{i, j}] = len(out)
			out = append(out, &ipamv1.PoolUsage{
				RangeSet: uint32(i), Subnet: r.Subnet.String(),
				RangeStart: r.RangeStart.String(), RangeEnd: r.RangeEnd.String(),
				Size: r.Size(),
			})
		}
	}
	for _, rv := range res {
		for i, set := range sets {
			if j, ok := set.RangeFor(rv.Addr); ok {
				out[index[pos{i, j}]].Used++
				break
			}
		}
	}
	return out
}
