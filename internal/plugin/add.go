package plugin

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/container"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netns"
	"github.com/pier-cni/pier/internal/sysctl"
	"github.com/pier-cni/pier/internal/veth"
)

// add attaches the container to the bridge. Steps, each undone if a later
// one fails:
//
//	check the netns → ensure the bridge → create the veth pair (container end
//	straight into the netns) → bandwidth limits → allocate addresses → put
//	the gateway on the bridge → configure the container (addresses, routes)
//	→ forwarding, and masquerade, host ports and MAC check in one nftables
//	transaction on the node → result.
//
// The veth comes before the allocation on purpose: if the container already
// has CNI_IFNAME, the ADD fails before IPAM is asked, so a repeated ADD can
// never release the address a live attachment uses.
func (c *call) add(ctx context.Context) (_ types.Result, err error) {
	var undo undoStack
	defer func() {
		if err != nil {
			if uerr := undo.run(c.log); uerr != nil {
				err = errors.Join(err, cnierr.Wrap(uerr, cnierr.CodeOf(err), "and the rollback failed"))
			}
		}
	}()

	step := c.stepTimer()
	if err := checkContainerNetNS(c.args.Netns); err != nil {
		return nil, err
	}
	br, created, err := bridge.Ensure(bridge.Config{Name: c.conf.Bridge, MTU: c.conf.MTU, Promisc: c.conf.PromiscMode, AutoMTU: true})
	if err != nil {
		return nil, err
	}
	step("ensure the bridge")
	pair, err := c.createVeth(br)
	if err != nil {
		return nil, err
	}
	step("create the veth")
	undo.push("delete veth "+pair.Host.Attrs().Name, func() error { return veth.DeleteHostEnd(pair.Host.Attrs().Name) })
	ifb, err := c.applyLimits(pair, &undo)
	if err != nil {
		return nil, err
	}

	res, err := c.ipam.Add(ctx)
	if err != nil {
		return nil, err
	}
	step("allocate")
	undo.push("release addresses", func() error {
		// The call's deadline may be what failed the ADD: give the release
		// its own.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		return c.ipam.Del(rctx)
	})
	if len(res.IPs) == 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "IPAM plugin %q returned no address", c.conf.IPAM.Type)
	}
	c.completeGateways(res)

	if c.conf.IsGateway {
		if _, _, err := bridge.Ensure(c.bridgeConfigWithGateways(res)); err != nil {
			return nil, err
		}
	}
	if err := container.Configure(c.args.Netns, c.args.IfName, c.containerIPConfig(res)); err != nil {
		return nil, err
	}
	step("gateway on the bridge, container's addresses and routes")
	if err := c.configureHost(res, hostSide{bridge: br.Attrs().Name, created: created, veth: pair}, &undo); err != nil {
		return nil, err
	}
	step("forwarding, nftables (and the bridge's setup for its first container)")
	return c.result(res, br, pair, ifb)
}

// releaseTimeout bounds the release of a failed ADD's addresses.
const releaseTimeout = 10 * time.Second

func (c *call) createVeth(br *netlink.Bridge) (*veth.Pair, error) {
	pair, err := veth.Create(veth.Config{
		ContainerNetNS: c.args.Netns,
		IfName:         c.args.IfName,
		HostName:       veth.HostName(c.args.ContainerID, c.args.IfName),
		MTU:            c.vethMTU(br),
		MAC:            c.conf.MAC,
		Bridge:         br,
		Hairpin:        c.conf.HairpinMode,
		Alias:          vethAlias(c.conf.Name, c.args.ContainerID, c.args.IfName),
		Group:          veth.PortGroup,
	})
	if errors.Is(err, veth.ErrInterfaceExists) {
		return nil, cnierr.Wrap(err, cnierr.InterfaceExists, "cannot create the container interface")
	}
	return pair, err
}

// vethMTU is the config's MTU, else the bridge's, which a bridge Pier
// created took from the node's uplink (see bridge.UplinkMTU).
func (c *call) vethMTU(br *netlink.Bridge) int {
	if c.conf.MTU != 0 {
		return c.conf.MTU
	}
	return br.Attrs().MTU
}

// hostSide is what the ADD built on the node before the addresses came.
type hostSide struct {
	bridge  string
	created bool // this ADD created the bridge
	veth    *veth.Pair
}

// configureHost does the node-side work that depends on the addresses:
// forwarding when the bridge is the containers' gateway (IPv4 and IPv6, as
// the ranges ask), router advertisements ignored on the bridge, and the
// nftables work: masquerade, host ports, MAC check (configureNAT).
func (c *call) configureHost(res *current.Result, h hostSide, undo *undoStack) error {
	v4, v6 := families(res)
	if c.conf.IsGateway {
		if err := sysctl.EnableForwarding(v4, v6); err != nil {
			return err
		}
	}
	if !h.created { // the creator set it already
		if err := bridge.DisableRA(h.bridge); err != nil {
			return err
		}
	}
	return c.configureNAT(res, h, undo)
}

// masqTarget is the network's masquerade identity (its subnets, exempt from
// masquerade) and the container's addresses to add to its sets. The
// exempt subnets are the configured ranges' (in cluster mode the whole
// cluster CIDR: traffic to other nodes' containers keeps its source), the
// config's nonMasqueradeCIDRs (in Kubernetes mode the cluster's pod CIDRs,
// for the same reason) and any result prefix they do not cover (a
// delegated IPAM's).
func (c *call) masqTarget(res *current.Result) (nat.Network, []netip.Addr) {
	network := nat.Network{Name: c.conf.Name, Subnets: slices.Concat(c.ipam.Subnets(), c.conf.NonMasquerade)}
	var addrs []netip.Addr
	for _, ipc := range res.IPs {
		p, ok := prefixOf(ipc)
		if !ok {
			continue
		}
		addrs = append(addrs, p.Addr())
		if !slices.ContainsFunc(network.Subnets, func(s netip.Prefix) bool { return s.Contains(p.Addr()) && s.Bits() <= p.Bits() }) {
			network.Subnets = append(network.Subnets, p.Masked())
		}
	}
	return network, addrs
}

func (c *call) owner() string { return c.args.ContainerID + "/" + c.args.IfName }

// masqOwner is the owner as the masquerade element's comment stores it
// (shortened when very long).
func (c *call) masqOwner() string { return nat.StoredOwner(c.owner()) }

// vethAlias is written on the host end so `ip link`, GC and `pierctl inspect`
// can tell which attachment a veth belongs to without any state file.
func vethAlias(network, containerID, ifName string) string {
	return "pier:" + network + ":" + containerID + ":" + ifName
}

// checkContainerNetNS refuses a CNI_NETNS that is not a network namespace or
// is the plugin's own (the node's): configuring the node as if it were a
// container would take its interfaces apart.
func checkContainerNetNS(path string) error {
	same, err := netns.IsCurrent(path)
	if err != nil {
		return cnierr.Wrap(err, cnierr.InvalidEnv, "CNI_NETNS %q is not a usable network namespace", path)
	}
	if same {
		return cnierr.New(cnierr.InvalidEnv, "CNI_NETNS %q is the namespace the plugin runs in (the node's), not a container's", path)
	}
	return nil
}
