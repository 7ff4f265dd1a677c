package nodestate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"

	"github.com/pier-cni/pier/internal/firewall"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/veth"
)

// Watcher is pierd's part: it notices within moments that someone removed
// Pier's netfilter state and puts it back.
//
// How it notices. It listens to nftables' notifications in the node's
// namespace (a flush, a reload, a deleted table, chain or rule; element
// changes, which every ADD and DEL makes, are ignored) and also looks
// every Interval, for what notifies nothing: iptables-legacy's tables.
// Each look costs a few netlink dumps, and a run of iptables-legacy only
// where a legacy filter table exists.
//
// What it looks at. Pier's table carries a sentinel set that only the
// watcher creates: when it is gone, the table was flushed or deleted. And
// `nft flush table inet pier`, which keeps sets (the sentinel too) but
// removes every rule, leaves Pier's chains empty (nat.FindLostRules).
// Either way every network recorded under Roots is restored and every
// registered resync runs. Chains still empty after that belong to
// networks recorded elsewhere (a dataDir pierd does not know): they are
// not tried again until they change, so that the watcher does not loop
// on its own notifications. Then, for each recorded bridge whose host
// filters are to be opened, the filters are read, and a bridge that lost
// an accept (a firewalld reload, `iptables -F`, a Docker restart) is set
// up again.
//
// Other features with state in table inet pier (their own chains and
// maps) Register a resync and are told, in the same pass, that the table
// was flushed.
type Watcher struct {
	Roots    []string // record roots: pierd's data directory and its state directory
	Lock     string   // the node's lock (nodelock.DefaultPath in pierd)
	Interval time.Duration
	Log      *slog.Logger

	mu      sync.Mutex
	resyncs []namedResync

	// unrepaired are the chains a restore left without rules, which
	// only Pass reads and writes.
	unrepaired map[string]bool
}

type namedResync struct {
	name string
	fn   func(context.Context) error
}

// sentinel is the watcher's set in table inet pier.
const sentinel = "pierd-watch"

// Register adds a resync run after Pier's table was found flushed (and
// once at start). It must rebuild its whole state in the table.
func (w *Watcher) Register(name string, resync func(context.Context) error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.resyncs = append(w.resyncs, namedResync{name, resync})
}

// Run watches until ctx ends. It makes one pass at once.
func (w *Watcher) Run(ctx context.Context) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("watch nftables: %w", err)
	}
	mon := nftables.NewMonitor()
	events, err := conn.AddMonitor(mon)
	if err != nil {
		return fmt.Errorf("watch nftables: %w", err)
	}
	defer mon.Close()
	kick := make(chan struct{}, 1)
	go func() {
		for ev := range events {
			if ev.Type == nftables.MonitorEventTypeNewSetElem || ev.Type == nftables.MonitorEventTypeDelSetElem {
				continue
			}
			select {
			case kick <- struct{}{}:
			default: // a pass is due already
			}
		}
	}()
	tick := time.NewTicker(w.Interval)
	defer tick.Stop()
	for {
		if err := w.Pass(ctx); err != nil {
			w.Log.Warn("restoring Pier's netfilter state", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-tick.C:
		}
	}
}

// Pass looks once and restores what is missing.
func (w *Watcher) Pass(ctx context.Context) error {
	flushed, err := sentinelGone()
	if err != nil {
		return err
	}
	emptied, err := w.emptied()
	if err != nil {
		return err
	}
	var errs []error
	if flushed || emptied.Any() {
		w.Log.Info("Pier's nftables table was flushed or deleted: restoring", "chainsWithoutRules", emptied.String())
		errs = append(errs, repairShared(), w.restoreAll())
		w.mu.Lock()
		resyncs := append([]namedResync(nil), w.resyncs...)
		w.mu.Unlock()
		for _, r := range resyncs {
			if err := r.fn(ctx); err != nil {
				errs = append(errs, fmt.Errorf("resync %s: %w", r.name, err))
			}
		}
		errs = append(errs, setSentinel())
		errs = append(errs, w.noteUnrepaired())
	}
	errs = append(errs, w.checkHostFilters())
	return errors.Join(errs...)
}

// emptied returns the chains of Pier's that lost their rules, less those
// the last restore could not refill (still empty: still left alone).
func (w *Watcher) emptied() (nat.Lost, error) {
	lost, err := nat.FindLostRules()
	if err != nil {
		return nat.Lost{}, err
	}
	var fresh nat.Lost
	still := map[string]bool{}
	for _, ch := range lost.Chains {
		if w.unrepaired[ch] {
			still[ch] = true
		} else {
			fresh.Chains = append(fresh.Chains, ch)
		}
	}
	w.unrepaired = still
	return fresh, nil
}

// repairShared refills the chains every network shares, which a node
// with no record under the roots needs too (its ports' DNAT, the localnet
// drop, the RA guard of other networks' containers).
func repairShared() error {
	lost, err := nat.FindLostRules()
	if err == nil {
		err = nat.RepairRules(lost, veth.PortGroup)
	}
	return err
}

// noteUnrepaired records the chains still without rules after a restore.
func (w *Watcher) noteUnrepaired() error {
	lost, err := nat.FindLostRules()
	if err != nil {
		return err
	}
	w.unrepaired = map[string]bool{}
	for _, ch := range lost.Chains {
		w.unrepaired[ch] = true
	}
	if lost.Any() {
		w.Log.Warn("chains of Pier's still without rules after a restore: their networks' records are not under pierd's directories, and their next ADD, CHECK or GC puts them back",
			"chains", lost.String())
	}
	return nil
}

// restoreAll restores every network recorded under the roots.
func (w *Watcher) restoreAll() error {
	var errs []error
	for _, root := range w.Roots {
		nets, err := Networks(root)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, n := range nets {
			if _, err := Restore(Paths{Root: root, Lock: w.Lock}, n, true, w.Log); err != nil {
				errs = append(errs, fmt.Errorf("network %s: %w", n, err))
			}
		}
	}
	return errors.Join(errs...)
}

// checkHostFilters sets up again every recorded bridge that lost its
// marker or a host accept, and guards its route_localnet.
func (w *Watcher) checkHostFilters() error {
	ready, err := nat.ReadyBridges()
	if err != nil {
		return err
	}
	var errs []error
	seen := map[string]bool{}
	for _, root := range w.Roots {
		nets, err := Networks(root)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, n := range nets {
			recs, rerrs := Records(root, n)
			errs = append(errs, rerrs...)
			for _, r := range recs {
				if seen[r.Bridge] || !linkExists(r.HostVeth) {
					continue
				}
				seen[r.Bridge] = true
				errs = append(errs, w.checkBridge(root, n, r, ready[r.Bridge]), w.checkLocalnet(r.Bridge))
			}
		}
	}
	return errors.Join(errs...)
}

func (w *Watcher) checkBridge(root, network string, r Record, ready bool) error {
	lost := !ready
	if ready && r.Firewall {
		places, err := firewall.New().Scan(r.Bridge)
		if err != nil {
			return err
		}
		lost = len(firewall.Missing(places)) > 0
	}
	if !lost {
		return nil
	}
	w.Log.Info("bridge lost its setup or a host accept: restoring", "bridge", r.Bridge, "network", network)
	if _, err := SetupBridge(w.Lock, r.Spec()); err != nil {
		return fmt.Errorf("bridge %s: %w", r.Bridge, err)
	}
	if !ready { // the marker went with the table: the elements may have too
		_, err := Restore(Paths{Root: root, Lock: w.Lock}, network, false, w.Log)
		return err
	}
	return nil
}

// checkLocalnet puts the localnet guard back on a bridge whose
// route_localnet is on without it.
func (w *Watcher) checkLocalnet(bridge string) error {
	fixed, err := VerifyLocalnet(w.Lock, bridge)
	if fixed {
		w.Log.Info("bridge had route_localnet on without its guard: guard added", "bridge", bridge)
	}
	return err
}

func sentinelSet() *nftables.Set {
	return &nftables.Set{Table: &nftables.Table{Family: nftables.TableFamilyINet, Name: nat.TableName}, Name: sentinel,
		KeyType: nftables.TypeInteger, Comment: "pierd: gone means the table was flushed"}
}

func sentinelGone() (bool, error) {
	conn, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	s := sentinelSet()
	if _, err := conn.GetSetByName(s.Table, s.Name); err != nil {
		if nat.IsNotFound(err) {
			return true, nil
		}
		return false, fmt.Errorf("read pierd's sentinel set: %w", err)
	}
	return false, nil
}

// setSentinel adds the sentinel to table inet pier, if the table exists:
// a node where Pier has nothing in netfilter gets nothing from pierd
// either (and a pierd outside the node's namespace, which finds no veth of
// its records, touches nothing).
func setSentinel() error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables netlink socket: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list inet tables: %w", err)
	}
	s := sentinelSet()
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == s.Table.Name }) {
		return nil
	}
	if err := conn.AddSet(s, nil); err != nil {
		return err
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("create pierd's sentinel set: %w", err)
	}
	return nil
}
