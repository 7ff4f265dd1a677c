package leases

import (
	"context"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc"
)

// Daemon reads a network's reservations from pierd (daemon mode): from the
// socket given, or else from the network's own "ipam.daemonSocket". A
// network without either is read from the local store.
type Daemon struct {
	Socket string // overrides every network's daemonSocket when set
}

var _ Source = Daemon{}

func (d Daemon) socket(conf *config.IPAMConfig) string {
	if d.Socket != "" {
		return d.Socket
	}
	return conf.DaemonSocket
}

// Where implements Source.
func (d Daemon) Where(conf *config.IPAMConfig) string {
	if s := d.socket(conf); s != "" {
		return "pierd at " + s
	}
	return Local{}.Where(conf)
}

// List implements Source.
func (d Daemon) List(ctx context.Context, conf *config.IPAMConfig) ([]ipam.Reservation, error) {
	s := d.socket(conf)
	if s == "" {
		return Local{}.List(ctx, conf)
	}
	c, err := ipamrpc.Dial(s)
	if err != nil {
		return nil, err
	}
	defer c.Close() //nolint:errcheck // a read-only session
	return c.Reservations(ctx, conf)
}

// Status implements Source: pool usage from pierd's reservations, and
// pierd's own answer to whether an ADD can be served.
func (d Daemon) Status(ctx context.Context, conf *config.IPAMConfig) (*Status, error) {
	s := d.socket(conf)
	if s == "" {
		return Local{}.Status(ctx, conf)
	}
	c, err := ipamrpc.Dial(s)
	if err != nil {
		return nil, err
	}
	defer c.Close() //nolint:errcheck // a read-only session
	res, err := c.Reservations(ctx, conf)
	if err != nil {
		return nil, err
	}
	st := Usage(conf, res)
	st.Store = d.Where(conf)
	switch err := c.Ready(ctx, conf); {
	case err == nil:
		st.Ready = true
	case cnierr.CodeOf(err) == cnierr.PluginNotAvailable:
		st.Reason = err.Error()
	default:
		return nil, err
	}
	return st, nil
}
