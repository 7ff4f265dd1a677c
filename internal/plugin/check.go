package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/container"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/veth"
)

// check verifies that the attachment described by prevResult still exists as
// built: the IPAM reservation, the container interface with its MAC,
// addresses and routes, the host veth on the bridge with hairpin as
// configured, the gateway on the bridge, the masquerade elements, host
// ports, MAC check and bandwidth limits. Extra
// addresses or routes (a later chained plugin may add some) are tolerated.
// Every finding is reported, each naming what is missing or wrong.
func (c *call) check(ctx context.Context) (types.Result, error) {
	prev, err := c.prevResult()
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, "CHECK needs the prevResult of the ADD in the config")
	}
	if err := c.ipam.Check(ctx); err != nil {
		return nil, err
	}
	if err := c.repairNodeState(false); err != nil {
		return nil, err
	}
	var problems []error
	problems = append(problems, c.checkContainer(prev)...)
	problems = append(problems, c.checkHost(prev)...)
	if len(problems) > 0 {
		return nil, cnierr.Wrap(errors.Join(problems...), cnierr.UnknownContainer, "attachment %s on network %s is not as built", c.owner(), c.conf.Name)
	}
	return nil, nil
}

func (c *call) checkContainer(prev *current.Result) []error {
	state, err := container.Read(c.args.Netns, c.args.IfName)
	if err != nil {
		return []error{err}
	}
	var problems []error
	idx := c.containerIndex(prev)
	if idx < 0 {
		return []error{fmt.Errorf("prevResult lists no interface %s in a sandbox", c.args.IfName)}
	}
	if want, got := prev.Interfaces[idx].Mac, state.Link.Attrs().HardwareAddr.String(); want != "" && want != got {
		problems = append(problems, fmt.Errorf("%s has MAC %s, prevResult says %s", c.args.IfName, got, want))
	}
	for _, ipc := range prev.IPs {
		p, ok := prefixOf(ipc)
		if !ok || ipc.Interface == nil || *ipc.Interface != idx {
			continue
		}
		if !slices.Contains(state.Addrs, p) {
			problems = append(problems, fmt.Errorf("%s lacks address %s", c.args.IfName, p))
		}
	}
	_, gw4, gw6 := c.gatewaysOf(prev)
	for _, r := range prev.Routes {
		want := containerRoute(r, gw4, gw6)
		if !slices.Contains(state.Routes, want) {
			problems = append(problems, fmt.Errorf("container lacks route %s via %s", want.Dst, want.Gw))
		}
	}
	return problems
}

func (c *call) checkHost(prev *current.Result) []error {
	var problems []error
	hostName := veth.HostName(c.args.ContainerID, c.args.IfName)
	ports, err := bridge.Ports(c.conf.Bridge)
	if err != nil {
		return []error{err}
	}
	i := slices.IndexFunc(ports, func(p bridge.Port) bool { return p.Name == hostName })
	switch {
	case i < 0:
		problems = append(problems, fmt.Errorf("host veth %s is not a port of bridge %s", hostName, c.conf.Bridge))
	case ports[i].Hairpin != c.conf.HairpinMode:
		problems = append(problems, fmt.Errorf("host veth %s has hairpin %v, config says %v", hostName, ports[i].Hairpin, c.conf.HairpinMode))
	}
	addrs, _, _ := c.gatewaysOf(prev)
	if c.conf.IsGateway {
		have, err := bridge.Addrs(c.conf.Bridge)
		if err != nil {
			return append(problems, err)
		}
		for _, gw := range addrs {
			if !slices.Contains(have, gw) {
				problems = append(problems, fmt.Errorf("bridge %s lacks gateway address %s", c.conf.Bridge, gw))
			}
		}
	}
	if c.conf.IPMasq {
		problems = append(problems, c.checkMasq(prev, c.containerIndex(prev))...)
	}
	problems = append(problems, c.checkPolicy(c.ownAddrs(prev))...)
	return append(problems, c.checkFeatures(prev, c.containerIndex(prev))...)
}

// ownAddrs are this attachment's addresses in a result.
func (c *call) ownAddrs(res *current.Result) []netip.Addr {
	idx := c.containerIndex(res)
	var out []netip.Addr
	for _, ipc := range res.IPs {
		if a, ok := addrOf(ipc.Address.IP); ok && ipc.Interface != nil && *ipc.Interface == idx {
			out = append(out, a)
		}
	}
	return out
}

// containerIndex is the index of this attachment's interface in a result,
// or -1.
func (c *call) containerIndex(res *current.Result) int {
	return slices.IndexFunc(res.Interfaces, func(i *current.Interface) bool {
		return i.Name == c.args.IfName && i.Sandbox != ""
	})
}

func (c *call) checkMasq(prev *current.Result, idx int) []error {
	elems, err := nat.ListMasq(c.conf.Name)
	if err != nil {
		return []error{err}
	}
	var problems []error
	for _, ipc := range prev.IPs {
		a, ok := addrOf(ipc.Address.IP)
		if !ok || ipc.Interface == nil || *ipc.Interface != idx {
			continue // another plugin's address: not ours to masquerade
		}
		if !slices.Contains(elems, nat.Element{Addr: a, Owner: c.masqOwner()}) {
			problems = append(problems, fmt.Errorf("masquerade set of network %s lacks %s owned by %s", c.conf.Name, a, c.owner()))
		}
	}
	return problems
}

// gatewaysOf returns the gateway addresses (with their subnet's length) of a
// result and the first gateway of each family.
func (c *call) gatewaysOf(res *current.Result) (gws []netip.Prefix, gw4, gw6 netip.Addr) {
	for _, ipc := range res.IPs {
		p, ok := prefixOf(ipc)
		gw, gok := addrOf(ipc.Gateway)
		if !ok || !gok || ipc.Gateway == nil {
			continue
		}
		gws = append(gws, netip.PrefixFrom(gw, p.Bits()))
		if gw.Is4() && !gw4.IsValid() {
			gw4 = gw
		} else if gw.Is6() && !gw6.IsValid() {
			gw6 = gw
		}
	}
	return gws, gw4, gw6
}

// prevResult returns the config's prevResult as a current result, or nil.
func (c *call) prevResult() (*current.Result, error) {
	if c.conf.PrevResult == nil {
		return nil, nil
	}
	prev, err := current.NewResultFromResult(c.conf.PrevResult)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "prevResult cannot be converted")
	}
	return prev, nil
}

// checkFeatures verifies the host ports, MAC check and bandwidth limits
// of the attachment against prevResult.
func (c *call) checkFeatures(prev *current.Result, idx int) []error {
	return append(c.checkLimits(), c.checkNodeElements(prev, idx)...)
}
