package plugin

import (
	"context"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
)

// status answers whether an ADD could be served now. The bridge and the
// nftables table are created on demand by ADD, so readiness is IPAM's:
// free addresses in every range set and a usable store (or a ready delegated
// plugin). Anything else is reported as code 50 with the reason.
func (c *call) status(ctx context.Context) (types.Result, error) {
	if err := c.ipam.Status(ctx); err != nil {
		code := cnierr.CodeOf(err)
		if code != cnierr.PluginNotAvailable && code != cnierr.LimitedConnectivity {
			err = cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %s cannot serve ADD", c.conf.Name)
		}
		return nil, err
	}
	return nil, nil
}
