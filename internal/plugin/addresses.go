package plugin

import (
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/container"
)

// prefixOf converts a result address into a netip.Prefix (address plus the
// subnet's length).
func prefixOf(ipc *current.IPConfig) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(ipc.Address.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := ipc.Address.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones), true
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

func families(res *current.Result) (v4, v6 bool) {
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() != nil {
			v4 = true
		} else {
			v6 = true
		}
	}
	return v4, v6
}

// completeGateways gives every address a gateway when the bridge is the
// gateway and IPAM named none (a delegated static IPAM, say): the subnet's
// first address, as the reference does.
func (c *call) completeGateways(res *current.Result) {
	if !c.conf.IsGateway && !c.conf.IsDefaultGateway {
		return
	}
	for _, ipc := range res.IPs {
		if ipc.Gateway != nil {
			continue
		}
		if p, ok := prefixOf(ipc); ok {
			ipc.Gateway = net.IP(p.Masked().Addr().Next().AsSlice())
		}
	}
}

// bridgeConfigWithGateways is the bridge config with every gateway address
// (with its subnet's length) to hold.
func (c *call) bridgeConfigWithGateways(res *current.Result) bridge.Config {
	cfg := bridge.Config{Name: c.conf.Bridge, MTU: c.conf.MTU, Promisc: c.conf.PromiscMode, ForceAddress: c.conf.ForceAddress}
	seen := map[netip.Prefix]bool{}
	for _, ipc := range res.IPs {
		p, ok := prefixOf(ipc)
		gw, gok := addrOf(ipc.Gateway)
		if !ok || !gok || ipc.Gateway == nil {
			continue
		}
		gwp := netip.PrefixFrom(gw, p.Bits())
		if !seen[gwp] {
			seen[gwp] = true
			cfg.Gateways = append(cfg.Gateways, gwp)
		}
	}
	return cfg
}

// containerIPConfig lists what goes into the container: its addresses, and
// the routes — IPAM's routes (a route without "gw" goes via the gateway of
// its family, as the reference does) plus, with isDefaultGateway, a default
// route per family unless IPAM already gave one. Added default routes are
// appended to res.Routes so the result tells the runtime about them.
func (c *call) containerIPConfig(res *current.Result) container.IPConfig {
	cfg := container.IPConfig{EnableDAD: c.conf.EnableDAD}
	var gw4, gw6 netip.Addr
	for _, ipc := range res.IPs {
		if p, ok := prefixOf(ipc); ok {
			cfg.Addrs = append(cfg.Addrs, p)
		}
		if gw, ok := addrOf(ipc.Gateway); ok && ipc.Gateway != nil {
			if gw.Is4() && !gw4.IsValid() {
				gw4 = gw
			} else if gw.Is6() && !gw6.IsValid() {
				gw6 = gw
			}
		}
	}
	if c.conf.IsDefaultGateway {
		res.Routes = appendDefaultRoutes(res.Routes, gw4, gw6)
	}
	for _, r := range res.Routes {
		cfg.Routes = append(cfg.Routes, containerRoute(r, gw4, gw6))
	}
	return cfg
}

func containerRoute(r *types.Route, gw4, gw6 netip.Addr) container.Route {
	addr, _ := addrOf(r.Dst.IP)
	ones, _ := r.Dst.Mask.Size()
	route := container.Route{Dst: netip.PrefixFrom(addr, ones).Masked()}
	if gw, ok := addrOf(r.GW); ok && r.GW != nil {
		route.Gw = gw
	} else if addr.Is4() {
		route.Gw = gw4
	} else {
		route.Gw = gw6
	}
	return route
}

func appendDefaultRoutes(routes []*types.Route, gw4, gw6 netip.Addr) []*types.Route {
	has4, has6 := false, false
	for _, r := range routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			if r.Dst.IP.To4() != nil {
				has4 = true
			} else {
				has6 = true
			}
		}
	}
	if gw4.IsValid() && !has4 {
		routes = append(routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: net.IP(gw4.AsSlice())})
	}
	if gw6.IsValid() && !has6 {
		routes = append(routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: net.IP(gw6.AsSlice())})
	}
	return routes
}
