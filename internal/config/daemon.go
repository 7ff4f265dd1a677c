package config

// Daemon mode: "ipam": {"type": "pier-ipam", "daemonSocket": "/run/pier/pierd.sock"}.
// The plugin keeps parsing and validating the whole IPAM config (so a bad
// range is refused the same way in both modes) and sends pierd the
// normalized ranges; pierd validates them again with ParseRangeSets, since a
// socket is a trust boundary too.

import (
	"path/filepath"
	"strconv"

	"github.com/pier-cni/pier/internal/cnierr"
)

// DefaultDaemonSocket is where pierd listens unless told otherwise.
const DefaultDaemonSocket = "/run/pier/pierd.sock"

// loadDaemonSocket reads ipam.daemonSocket. In daemon mode the reservations
// live under pierd's --data-dir, so an ipam.dataDir is a value Pier cannot
// honour (code 2) rather than one to ignore silently.
func (c *IPAMConfig) loadDaemonSocket(n *ipamNetJSON) error {
	sock := n.IPAM.DaemonSocket
	if sock == "" {
		return nil
	}
	if !filepath.IsAbs(sock) {
		return cnierr.New(cnierr.InvalidConfig, `"ipam.daemonSocket": %q must be an absolute path`, sock)
	}
	if n.IPAM.DataDir != "" {
		return cnierr.New(cnierr.UnsupportedField,
			`"ipam.dataDir": %q is not used in daemon mode ("ipam.daemonSocket" is set): pierd keeps reservations under its own --data-dir`,
			n.IPAM.DataDir)
	}
	c.DaemonSocket = filepath.Clean(sock)
	return nil
}

// RangeSpec is one range as text, as on the wire to pierd: the fields of
// host-local's range. Empty fields take host-local's defaults.
type RangeSpec struct {
	Subnet, RangeStart, RangeEnd, Gateway string
}

// ParseRangeSets validates range sets received as text exactly as LoadIPAM
// validates a config's "ranges" (families, bounds, overlaps), naming the
// offending one as "<key>[i][j]" in a code-7 error.
func ParseRangeSets(key string, sets [][]RangeSpec) ([]RangeSet, error) {
	if len(sets) == 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "%q has no range set", key)
	}
	var out []RangeSet
	for i, specs := range sets {
		raw := make([]rangeJSON, len(specs))
		for j, s := range specs {
			raw[j] = rangeJSON(s)
		}
		set, err := parseRangeSet(key+"["+strconv.Itoa(i)+"]", raw)
		if err != nil {
			return nil, err
		}
		out = append(out, set)
	}
	if err := checkOverlaps(out); err != nil {
		return nil, err
	}
	return out, nil
}

// Spec renders r back to text; ParseRangeSets(Spec) gives r again.
func (r Range) Spec() RangeSpec {
	return RangeSpec{
		Subnet:     r.Subnet.String(),
		RangeStart: r.RangeStart.String(),
		RangeEnd:   r.RangeEnd.String(),
		Gateway:    r.Gateway.String(),
	}
}

// ValidateNetworkName applies the rule LoadIPAM applies to "name", for
// names received from elsewhere (pierd's socket).
func ValidateNetworkName(name string) error { return validateNetworkName(name) }
