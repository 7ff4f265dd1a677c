package lint

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/config"
)

// Known keys. Pier ignores unknown keys, as the reference does (runtimes and
// meta plugins add their own), so an unknown key is a warning: most often a
// typo that silently leaves a setting at its default.
var (
	listKeys = []string{"cniVersion", "cniVersions", "name", "plugins", "disableCheck", "disableGC", "loadOnlyInlinedPlugins"}
	// pluginKeys follow config.NetConf's own JSON tags, plus what runtimes
	// inject.
	pluginKeys = append(jsonKeys(reflect.TypeOf(config.NetConf{})), "cniVersions", "cni.dev/attachments")
	// ipamKeys are config.LoadIPAM's (a superset of host-local's).
	ipamKeys  = []string{"type", "subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes", "dataDir", "resolvConf", "daemonSocket"}
	rangeKeys = []string{"subnet", "rangeStart", "rangeEnd", "gateway"}
	// routeKeys are types.Route's (it marshals through a private struct).
	routeKeys = []string{"dst", "gw", "mtu", "advmss", "priority", "table", "scope"}
)

type object map[string]json.RawMessage

func rawFile(path string) (object, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var o object
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("cannot be decoded: %w", err)
	}
	return o, nil
}

// checkUnknownKeys warns about keys of the list, of Pier's plugin and of its
// pier-ipam section that nothing reads.
func (r *Result) checkUnknownKeys(n *confdir.Network, file object) {
	plugin := file
	where := ""
	if plugins, ok := file["plugins"]; ok {
		r.unknown("the list", file, listKeys)
		var list []object
		if json.Unmarshal(plugins, &list) != nil || n.PluginIndex < 0 || n.PluginIndex >= len(list) {
			return
		}
		plugin = list[n.PluginIndex]
		where = fmt.Sprintf("plugins[%d] ", n.PluginIndex)
	}
	if n.PluginIndex < 0 {
		return
	}
	if n.List.Plugins[n.PluginIndex].Network.Type == confdir.PluginType {
		r.unknown(where+"(type pier)", plugin, pluginKeys)
	}
	var ipam object
	if json.Unmarshal(plugin["ipam"], &ipam) != nil || ipamType(n) != config.IPAMType {
		return
	}
	r.unknown(where+"ipam", ipam, ipamKeys)
	var sets [][]object
	if json.Unmarshal(ipam["ranges"], &sets) == nil {
		for i, set := range sets {
			for j, rg := range set {
				r.unknown(fmt.Sprintf("%sipam.ranges[%d][%d]", where, i, j), rg, rangeKeys)
			}
		}
	}
	var routes []object
	if json.Unmarshal(ipam["routes"], &routes) == nil {
		for i, rt := range routes {
			r.unknown(fmt.Sprintf("%sipam.routes[%d]", where, i), rt, routeKeys)
		}
	}
}

func (r *Result) unknown(where string, o object, known []string) {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if slices.Contains(known, k) {
			continue
		}
		msg := fmt.Sprintf("unknown key %q in %s: pier ignores it", k, where)
		if s := closest(k, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		r.add(Warning, "%s", msg)
	}
}

// closest returns the known key within two edits of k (case ignored), or "".
func closest(k string, known []string) string {
	best, bestD := "", 3
	for _, c := range known {
		if d := distance(strings.ToLower(k), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// distance is the Levenshtein distance of two short strings.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
