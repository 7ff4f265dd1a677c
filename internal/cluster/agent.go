package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pier-cni/pier/internal/routing"
)

// ResyncEvery forces a full re-read and reconcile.
const ResyncEvery = 30 * time.Second

// Agent keeps the node's routes to other nodes' blocks (package doc): the
// blocks in etcd are its control plane, package routing its data plane.
type Agent struct {
	Cli    *clientv3.Client
	Cfg    Config
	Node   string
	NodeIP netip.Addr
	// NodeIP6 is the node's IPv6 underlay address, if any: its IPv6 blocks
	// are routed via it (host-gw).
	NodeIP6 netip.Addr
	Log     *slog.Logger

	dp *routing.Programmer
	// unreadable counts block keys or values the agent could not parse: such
	// a block is not routed, so a wrong writer (or a newer pierd's format)
	// shows in the log and the count rather than as a silent gap.
	unreadable atomic.Int64
}

// Unreadable returns how many block keys or values the agent has not been
// able to parse since it started (each read counts: a full read and each
// watch event).
func (g *Agent) Unreadable() int64 { return g.unreadable.Load() }

// skipUnreadable logs and counts a block the agent cannot parse.
func (g *Agent) skipUnreadable(key string, err error) {
	g.unreadable.Add(1)
	g.Log.Warn("route agent: block not routed: cannot parse it", "key", key, "err", err)
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
	all, bad, rev, err := listBlocks(lctx, g.Cli)
	cancel()
	if err != nil {
		return err
	}
	for key, err := range bad {
		g.skipUnreadable(key, err)
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
			if g.apply(wr.Events, blocks) {
				if err := g.reconcile(blocks); err != nil {
					g.Log.Warn("route agent: reconcile", "err", err)
				}
			}
		}
	}
}

// apply updates blocks with watch events and says whether routing may
// have changed (a block came or went, or changed node).
func (g *Agent) apply(events []*clientv3.Event, blocks map[netip.Prefix]*Block) (changed bool) {
	for _, ev := range events {
		key := string(ev.Kv.Key)
		if ev.Type == clientv3.EventTypeDelete {
			p, err := ParseBlockKey(key)
			if err != nil {
				g.skipUnreadable(key, err)
				continue
			}
			delete(blocks, p)
			changed = true
			continue
		}
		b, err := decodeBlock(ev.Kv.Key, ev.Kv.Value)
		if err != nil {
			g.skipUnreadable(key, err)
			continue
		}
		if old, ok := blocks[b.CIDR]; !ok || old.Node != b.Node || old.NodeIP != b.NodeIP {
			changed = true
		}
		blocks[b.CIDR] = b
	}
	return changed
}

// plan turns the blocks into the routing State: every block of another
// node, via that node's IP (host-gw), or in vxlan mode via the node IP as
// a neighbour key on pier.vxlan, whose MAC is derived from that IP.
func (g *Agent) plan(blocks map[netip.Prefix]*Block) routing.State {
	var s routing.State
	peers := map[netip.Addr]bool{}
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
		s.Routes = append(s.Routes, routing.Route{Dst: p, Via: b.NodeIP})
		if g.Cfg.Mode == ModeVXLAN && !peers[b.NodeIP] {
			peers[b.NodeIP] = true
			s.Peers = append(s.Peers, routing.Peer{Underlay: b.NodeIP, MAC: routing.MACFor(b.NodeIP), NextHops: []netip.Addr{b.NodeIP}})
		}
	}
	return s
}

// reconcile makes the node's routes (and vxlan entries) match blocks.
func (g *Agent) reconcile(blocks map[netip.Prefix]*Block) error {
	if g.dp == nil {
		g.dp = &routing.Programmer{Mode: g.Cfg.Mode, VTEP: g.NodeIP, Log: g.Log}
	}
	return g.dp.Apply(g.plan(blocks))
}
