package plugin

import (
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/veth"
)

// result builds the ADD result: the bridge, the host veth and the container
// interface (in that order, as the reference reports them), the addresses
// bound to the container interface, routes and DNS. With a prevResult (the
// plugin is chained after another), that result is kept and ours appended,
// as the spec's chaining rules ask. An ifb shaping the container's egress
// comes last, as the reference bandwidth plugin reports it.
func (c *call) result(res *current.Result, br *netlink.Bridge, pair *veth.Pair, ifb *current.Interface) (types.Result, error) {
	out := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: res.DNS}
	if c.conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(c.conf.PrevResult)
		if err != nil {
			return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "prevResult cannot be converted")
		}
		out = prev
		if dnsSet(res.DNS) {
			out.DNS = res.DNS
		}
	}
	// The config's own "dns" overrides IPAM's, as with the reference.
	if dnsSet(c.conf.DNS) {
		out.DNS = c.conf.DNS
	}
	first := len(out.Interfaces)
	out.Interfaces = append(out.Interfaces,
		&current.Interface{Name: br.Attrs().Name, Mac: br.Attrs().HardwareAddr.String()},
		&current.Interface{Name: pair.Host.Attrs().Name, Mac: pair.Host.Attrs().HardwareAddr.String()},
		&current.Interface{Name: c.args.IfName, Mac: pair.Container.Attrs().HardwareAddr.String(), Sandbox: c.args.Netns},
	)
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(first + 2)
		out.IPs = append(out.IPs, ipc)
	}
	if ifb != nil {
		out.Interfaces = append(out.Interfaces, ifb)
	}
	out.Routes = append(out.Routes, res.Routes...)
	return out, nil
}

func dnsSet(d types.DNS) bool {
	return len(d.Nameservers) > 0 || d.Domain != "" || len(d.Search) > 0 || len(d.Options) > 0
}
