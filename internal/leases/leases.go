// Package leases answers the operator's questions about a pier-ipam
// network's addresses: who holds which address, and how full each range is.
//
// The answers come from a Source. Local reads the node's own store through
// package ipam, under the store's lock (an flock on <dataDir>/<network>/lock),
// exactly as the plugin does; a client of pierd's IPAM service is meant to
// be another Source, so pierctl's commands do not change when the
// reservations live in the daemon.
package leases

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
)

// Source is where a network's reservations are read from.
type Source interface {
	// List returns every reservation of the network, in address order.
	List(ctx context.Context, conf *config.IPAMConfig) ([]ipam.Reservation, error)
	// Status returns the pool usage per range and whether an ADD can be
	// served.
	Status(ctx context.Context, conf *config.IPAMConfig) (*Status, error)
	// Where names the place the reservations are kept, for people.
	Where(conf *config.IPAMConfig) string
}

// Status is a network's pool: usage per range and readiness.
type Status struct {
	Network string       `json:"network"`
	Store   string       `json:"store"`
	Ranges  []RangeUsage `json:"ranges"`
	// Outside counts reservations no configured range holds (the ranges
	// changed since they were made); Unreadable, records that cannot be
	// parsed (their addresses stay held).
	Outside    int  `json:"outside,omitempty"`
	Unreadable int  `json:"unreadable,omitempty"`
	Ready      bool `json:"ready"`
	// Reason says why an ADD cannot be served when Ready is false.
	Reason string `json:"reason,omitempty"`
}

// RangeUsage is one range of one range set.
type RangeUsage struct {
	RangeSet int    `json:"rangeSet"`
	Range    int    `json:"range"`
	Subnet   string `json:"subnet"`
	Start    string `json:"rangeStart"`
	End      string `json:"rangeEnd"`
	Gateway  string `json:"gateway"`
	// Size is the number of addresses that can be handed out (the range
	// without its gateway), saturated at 2^64-1 for large IPv6 ranges.
	Size uint64 `json:"size"`
	Used uint64 `json:"used"`
}

// Free is Size minus Used.
func (r RangeUsage) Free() uint64 { return r.Size - min(r.Used, r.Size) }

// Local reads the store on this node.
type Local struct{}

var _ Source = Local{}

// Where implements Source.
func (Local) Where(conf *config.IPAMConfig) string { return filepath.Join(conf.DataDir, conf.Name) }

// List implements Source. A network whose store directory does not exist
// yet has no reservations; List does not create it.
func (l Local) List(ctx context.Context, conf *config.IPAMConfig) ([]ipam.Reservation, error) {
	if !l.exists(conf) {
		return nil, nil
	}
	return ipam.NewLocal(conf.DataDir, ipam.LocalOptions{}).List(ctx, conf)
}

// Status implements Source.
func (l Local) Status(ctx context.Context, conf *config.IPAMConfig) (*Status, error) {
	res, err := l.List(ctx, conf)
	if err != nil {
		return nil, err
	}
	st := Usage(conf, res)
	st.Store = l.Where(conf)
	if !l.exists(conf) {
		// A store the first ADD will create: every range is empty.
		st.Ready = true
		return st, nil
	}
	err = ipam.NewLocal(conf.DataDir, ipam.LocalOptions{}).Status(ctx, conf)
	switch {
	case err == nil:
		st.Ready = true
	case cnierr.CodeOf(err) == cnierr.PluginNotAvailable:
		st.Reason = err.Error()
	default:
		return nil, err
	}
	return st, nil
}

func (Local) exists(conf *config.IPAMConfig) bool {
	_, err := os.Stat(filepath.Join(conf.DataDir, conf.Name))
	return !errors.Is(err, os.ErrNotExist)
}

// Usage counts reservations per range. It is pure: any Source can use it.
func Usage(conf *config.IPAMConfig, res []ipam.Reservation) *Status {
	st := &Status{Network: conf.Name}
	for i, set := range conf.RangeSets {
		for j, r := range set {
			st.Ranges = append(st.Ranges, RangeUsage{
				RangeSet: i, Range: j, Subnet: r.Subnet.String(),
				Start: r.RangeStart.String(), End: r.RangeEnd.String(), Gateway: r.Gateway.String(),
				Size: r.Size(),
			})
		}
	}
	for _, rv := range res {
		if rv.Problem != "" {
			st.Unreadable++
		}
		if idx, ok := rangeOf(conf, st.Ranges, rv.Addr); ok {
			st.Ranges[idx].Used++
		} else {
			st.Outside++
		}
	}
	return st
}

func rangeOf(conf *config.IPAMConfig, usage []RangeUsage, a netip.Addr) (int, bool) {
	for i, u := range usage {
		if conf.RangeSets[u.RangeSet][u.Range].Contains(a) {
			return i, true
		}
	}
	return 0, false
}
