package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
)

// Route agent settings.
const (
	// RouteProtocol marks the routes the agent owns ("proto 80" in ip route).
	RouteProtocol = 80
	// VXLANDevice is the vxlan mode's device.
	VXLANDevice = "pier.vxlan"
	VXLANID     = 1
	VXLANPort   = 8472
	// ResyncEvery forces a full re-read and reconcile.
	ResyncEvery = 30 * time.Second
)

// Agent keeps the node's routes to other nodes' blocks (package doc).
type Agent struct {
	Cli    *clientv3.Client
	Cfg    Config
	Node   string
	NodeIP netip.Addr
	// NodeIP6 is the node's IPv6 underlay address, if any: its IPv6 blocks
	// are routed via it (host-gw).
	NodeIP6 netip.Addr
	Log     *slog.Logger
}

// Run watches the blocks and reconciles routes until ctx ends.
func (g *Agent) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := g.session(ctx); err != nil && ctx.Err() == nil {
			g.Log.Warn("route agent: resyncing", "err", err)
			if errors.Is(err, rpctypes.ErrCompacted) {
				continue // etcd answers: re-read now
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// session is one full read followed by a watch from the next revision;
// it returns when the watch breaks (compaction, etcd gone) or on resync.
func (g *Agent) session(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, OpTimeout)
	all, rev, err := ListBlocks(lctx, g.Cli)
	cancel()
	if err != nil {
		return err
	}
	blocks := map[netip.Prefix]*Block{}
	for p, rb := range all {
		blocks[p] = rb.b
	}
	if err := g.reconcile(blocks); err != nil {
		g.Log.Warn("route agent: reconcile", "err", err)
	}
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	wch := g.Cli.Watch(wctx, blocksPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	resync := time.NewTimer(ResyncEvery)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
			return nil
		case wr, ok := <-wch:
			if !ok {
				return errors.New("watch closed")
			}
			if err := wr.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return fmt.Errorf("watch revision compacted: %w", err)
				}
				return err
			}
			changed := false
			for _, ev := range wr.Events {
				p, err := ParseBlockKey(string(ev.Kv.Key))
				if err != nil {
					continue
				}
				if ev.Type == clientv3.EventTypeDelete {
					delete(blocks, p)
					changed = true
					continue
				}
				var b Block
				if json.Unmarshal(ev.Kv.Value, &b) != nil {
					continue
				}
				if old, ok := blocks[p]; !ok || old.Node != b.Node || old.NodeIP != b.NodeIP {
					changed = true
				}
				blocks[p] = &b
			}
			if changed {
				if err := g.reconcile(blocks); err != nil {
					g.Log.Warn("route agent: reconcile", "err", err)
				}
			}
		}
	}
}

// MACFor is the vxlan MAC of the node with underlay address ip.
func MACFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As16()
	return net.HardwareAddr{0x0a, 0x58, b[12], b[13], b[14], b[15]}
}

// reconcile makes the node's routes (and vxlan entries) match blocks.
func (g *Agent) reconcile(blocks map[netip.Prefix]*Block) error {
	var vx netlink.Link
	if g.Cfg.Mode == ModeVXLAN {
		var err error
		if vx, err = g.ensureVXLAN(); err != nil {
			return err
		}
	}
	want := map[string]*netlink.Route{}
	remotes := map[netip.Addr]bool{}
	for _, p := range sortedPrefixes(blocks) {
		b := blocks[p]
		if b.Node == g.Node || !b.NodeIP.IsValid() || b.NodeIP == g.NodeIP || b.NodeIP == g.NodeIP6 {
			continue
		}
		if b.NodeIP.Is4() != p.Addr().Is4() || (g.Cfg.Mode == ModeVXLAN && !p.Addr().Is4()) {
			// An IPv6 block of a node without --node-ip6 (no next hop of
			// its family), or IPv6 in vxlan mode: not routed.
			g.Log.Debug("route agent: block not routable", "block", p, "via", b.NodeIP, "mode", g.Cfg.Mode)
			continue
		}
		r := &netlink.Route{Dst: ipNet(p), Gw: b.NodeIP.AsSlice(), Protocol: RouteProtocol}
		if vx != nil {
			r.LinkIndex = vx.Attrs().Index
			r.Flags = int(netlink.FLAG_ONLINK)
			remotes[b.NodeIP] = true
		}
		want[p.String()] = r
	}
	var errs []error
	if vx != nil {
		errs = append(errs, g.reconcileVXLAN(vx, remotes))
	}
	errs = append(errs, g.dropForeignGateways(blocks))
	for _, r := range want {
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", r.Dst, r.Gw, err))
		}
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := netlink.RouteListFiltered(family, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range have {
			if r.Dst != nil && want[r.Dst.String()] == nil {
				if err := netlink.RouteDel(&r); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ensureVXLAN creates pier.vxlan on the link holding the node IP, or
// checks the existing one.
func (g *Agent) ensureVXLAN() (netlink.Link, error) {
	if l, err := netlink.LinkByName(VXLANDevice); err == nil {
		if v, ok := l.(*netlink.Vxlan); ok && v.VxlanId == VXLANID && v.SrcAddr.Equal(g.NodeIP.AsSlice()) {
			return l, netlink.LinkSetUp(l)
		}
		if err := netlink.LinkDel(l); err != nil {
			return nil, fmt.Errorf("replace incompatible %s: %w", VXLANDevice, err)
		}
	}
	under, mtu, err := linkWith(g.NodeIP)
	if err != nil {
		return nil, err
	}
	v := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, HardwareAddr: MACFor(g.NodeIP), MTU: mtu - 50},
		VxlanId:   VXLANID, VtepDevIndex: under, SrcAddr: g.NodeIP.AsSlice(), Port: VXLANPort, Learning: false,
	}
	if err := netlink.LinkAdd(v); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create %s: %w", VXLANDevice, err)
	}
	l, err := netlink.LinkByName(VXLANDevice)
	if err != nil {
		return nil, err
	}
	return l, netlink.LinkSetUp(l)
}

// linkWith returns the index and MTU of the link holding ip.
func linkWith(ip netip.Addr) (int, int, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, 0, err
	}
	for _, a := range addrs {
		if x, ok := netip.AddrFromSlice(a.IP); ok && x.Unmap() == ip {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, 0, err
			}
			return a.LinkIndex, l.Attrs().MTU, nil
		}
	}
	return 0, 0, fmt.Errorf("no link holds the node IP %s", ip)
}

// reconcileVXLAN keeps one FDB and one neighbour entry per remote node.
func (g *Agent) reconcileVXLAN(vx netlink.Link, remotes map[netip.Addr]bool) error {
	var errs []error
	for ip := range remotes {
		mac := MACFor(ip)
		family := netlink.FAMILY_V4
		if ip.Is6() {
			family = netlink.FAMILY_V6
		}
		fdb := &netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: ip.AsSlice(), HardwareAddr: mac}
		nb := &netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
			IP: ip.AsSlice(), HardwareAddr: mac}
		errs = append(errs, netlink.NeighSet(fdb), netlink.NeighSet(nb))
	}
	// Entries of nodes that have no block any more go.
	for _, fam := range []int{unix.AF_BRIDGE, netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := netlink.NeighList(vx.Attrs().Index, fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, n := range have {
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || n.State != netlink.NUD_PERMANENT || remotes[ip.Unmap()] {
				continue
			}
			errs = append(errs, netlink.NeighDel(&n))
		}
	}
	return errors.Join(errs...)
}

// dropForeignGateways removes from the node's links a gateway address of a
// block that now belongs to another node (the node gave the block back
// empty and another claimed it): its connected route would otherwise pull
// that block's traffic to the local bridge.
func (g *Agent) dropForeignGateways(blocks map[netip.Prefix]*Block) error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.IPNet == nil {
			continue
		}
		bits, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), bits).Masked()
		if b := blocks[p]; b != nil && b.Node != g.Node && b.Gateway() == ip.Unmap() {
			g.Log.Info("removing the gateway of a block now on another node", "block", p, "node", b.Node)
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err == nil {
				err = netlink.AddrDel(l, &a)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
