package nodestate

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/firewall"
	"github.com/pier-cni/pier/internal/links"
	"github.com/pier-cni/pier/internal/localnet"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodelock"
	"github.com/pier-cni/pier/internal/veth"
)

// BridgeSpec is the node-side setup one bridge gets.
type BridgeSpec struct {
	Bridge   string
	Firewall bool // open the host's filters that drop forwarded traffic
	Isolated bool // ingressPolicy same-bridge
}

// Paths are where a network's node state lives: the root of its records
// (see Dir) and the node's lock (package nodelock), which every bridge
// setup and teardown of the node takes, whatever its network's root.
type Paths struct {
	Root string
	Lock string
}

// SetupBridge opens the host's filters for the bridge (with Firewall),
// sets its isolation and then its marker, under the node's lock, when the
// bridge still has a port of Pier's. It returns the places of the host's
// filters it found.
//
// A restore calls it for a record whose veth it saw, but the DEL of the
// bridge's last container may have removed that veth and torn the bridge
// down while the restore waited for the lock: set up again, the bridge
// would keep its marker and the host's accepts with no container on it.
// So it looks again under the lock, as TeardownBridge does the other way.
func SetupBridge(lock string, s BridgeSpec) ([]firewall.Place, error) {
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if used, err := pierPorts(s.Bridge, ""); err != nil || !used {
		return nil, err
	}
	return setupBridgeAnew(s)
}

// EnsureBridge is SetupBridge for an ADD that found the bridge's marker
// missing: under the node's lock it looks again, and when another ADD set
// the bridge up meanwhile (the marker is there, with the isolation s
// asks for), it returns without redoing it. So concurrent first ADDs wait
// for the one doing the setup instead of each doing it again. done
// reports whether this call set the bridge up.
func EnsureBridge(lock string, s BridgeSpec) (places []firewall.Place, done bool, err error) {
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	plan, err := nat.PlanBridge(s.Bridge)
	if err != nil {
		return nil, false, err
	}
	defer plan.Close()
	if plan.Ready(s.Isolated) {
		return nil, false, nil
	}
	places, err = setupBridge(s, plan)
	return places, true, err
}

// setupBridge opens the host's filters (with s.Firewall) and then sets up
// Pier's side through plan: the base objects, the isolation and, last,
// the marker.
func setupBridge(s BridgeSpec, plan *nat.BridgePlan) ([]firewall.Place, error) {
	note := "host filters left alone (firewallBackend none)"
	var places []firewall.Place
	if s.Firewall {
		var err error
		if places, err = firewall.New().Ensure(s.Bridge); err != nil {
			return places, err
		}
		note = firewall.Summary(places)
	}
	if s.Isolated {
		note += "; ingressPolicy same-bridge"
	}
	return places, plan.Apply(nat.BridgeSetup{Bridge: s.Bridge, Isolated: s.Isolated, Note: note})
}

// setupBridgeAnew is setupBridge with a plan of its own.
func setupBridgeAnew(s BridgeSpec) ([]firewall.Place, error) {
	plan, err := nat.PlanBridge(s.Bridge)
	if err != nil {
		return nil, err
	}
	defer plan.Close()
	return setupBridge(s, plan)
}

// TeardownBridge removes the bridge's host accepts and marker, and turns
// its route_localnet off with its guard, once no Pier attachment is left
// on it; when one is, or arrives while this runs
// (its ADD may have found the marker just before it went), the bridge is
// set up again. It reports whether the bridge was torn down.
//
// leaving is the host veth of an attachment whose DEL runs this while it
// deletes that veth ("" for none, as in GC): its port does not count. A
// DEL so overlaps the teardown with the kernel's wait in the veth's
// deletion, both a grace period or more, instead of doing one after the
// other.
//
// The first test reads the bridge's ports until it finds another of
// Pier's: one receive when the bridge has many; the lock is taken only
// when there is none. opts go to the removal of Pier's marker (a DEL
// leaves its socket to close later: see nat.CloseLater).
func TeardownBridge(lock string, s BridgeSpec, leaving string, opts ...nat.Option) (bool, error) {
	if used, err := pierPorts(s.Bridge, leaving); err != nil || used {
		return false, err
	}
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return false, err
	}
	defer unlock()
	if used, err := pierPorts(s.Bridge, leaving); err != nil || used {
		return false, err
	}
	localnetOn, err := localnet.Enabled(s.Bridge)
	if err != nil {
		return false, err
	}
	if err := removeSetup(s, opts); err != nil {
		return false, err
	}
	if used, err := pierPorts(s.Bridge, leaving); err != nil || used {
		if err == nil {
			_, err = setupBridgeAnew(s)
		}
		if err == nil && localnetOn {
			err = localnet.Enable(s.Bridge) // the newcomer may have found it on
		}
		return false, err
	}
	return true, nil
}

// removeSetup removes the host's accepts beside Pier's marker and
// isolation and the bridge's route_localnet with its guard: each removal
// that deletes something makes its netlink socket's close wait a grace
// period, which they then wait together.
func removeSetup(s BridgeSpec, opts []nat.Option) error {
	fw := make(chan error, 1)
	go func() {
		if s.Firewall {
			fw <- firewall.New().Remove(s.Bridge)
			return
		}
		fw <- nil
	}()
	err := errors.Join(nat.RemoveBridge(s.Bridge, opts...), localnet.Disable(s.Bridge))
	return errors.Join(<-fw, err)
}

// pierPorts reports whether the bridge has ports of Pier's attachments
// other than leaving. A missing bridge has none.
func pierPorts(name, leaving string) (bool, error) {
	return bridge.HasOtherPort(name, leaving, "pier:")
}

// Restore puts the network's nftables state back from its records: the
// bridges' setup (when their marker is missing, or always with
// verifyBridges), the chains that lost their rules while the table kept
// its sets (see nat.FindLostRules), then every live record's elements. It
// returns how many attachments it restored.
func Restore(p Paths, network string, verifyBridges bool, log *slog.Logger) (int, error) {
	recs, errs := Records(p.Root, network)
	live, err := liveRecords(recs)
	if err != nil {
		return 0, err
	}
	errs = append(errs, setupBridges(p.Lock, live, verifyBridges)...)
	rebuild, err := repairRules(network)
	if err != nil {
		errs = append(errs, err)
	}
	n := 0
	for _, r := range live {
		ok, err := restoreOne(p.Root, r, rebuild.force(r))
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			n++
		}
	}
	if n > 0 {
		log.Info("restored nftables state", "network", network, "attachments", n)
	}
	return n, errors.Join(errs...)
}

// liveRecords keeps the records of this boot whose host veth exists:
// others are GC's to remove.
func liveRecords(recs []Record) ([]Record, error) {
	boot, err := BootID()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(recs, func(r Record) bool { return r.Boot != boot || !linkExists(r.HostVeth) }), nil
}

// setupBridges sets up the records' bridges whose marker is missing, or
// all of them with verify.
func setupBridges(lock string, recs []Record, verify bool) []error {
	ready, err := nat.ReadyBridges()
	if err != nil {
		return []error{err}
	}
	var errs []error
	done := map[string]bool{}
	for _, r := range recs {
		if done[r.Bridge] || (ready[r.Bridge] && !verify) {
			continue
		}
		done[r.Bridge] = true
		if _, err := SetupBridge(lock, r.Spec()); err != nil {
			errs = append(errs, fmt.Errorf("bridge %s: %w", r.Bridge, err))
		}
	}
	return errs
}

// repairRules refills the chains every network shares that lost their
// rules, and says which of the network's records are to be added with a
// full setup: the network's masquerade chains need its subnets, which
// only its records have.
func repairRules(network string) (rebuilder, error) {
	lost, err := nat.FindLostRules()
	if err != nil {
		return nil, err
	}
	if err := nat.RepairRules(lost, veth.PortGroup); err != nil {
		return nil, err
	}
	if lost.Network(network) {
		return rebuilder{}, nil
	}
	return nil, nil
}

// rebuilder picks, after a network's masquerade chains lost their rules,
// the first record of each list of subnets: adding it with a full setup
// refills the chains the others' elements lead to. Nil picks none.
type rebuilder map[string]bool

func (rb rebuilder) force(r Record) bool {
	if rb == nil || len(r.Masq) == 0 {
		return false
	}
	key := fmt.Sprint(r.Subnets)
	if rb[key] {
		return false
	}
	rb[key] = true
	return true
}

// restoreOne re-adds the elements of the record at r's path under its
// lock. What it restores is the record read under the lock, not r, which
// Restore read before: the attachment may have been deleted and added
// again meanwhile (a runtime retrying a sandbox under the same ID), with
// other addresses, and r's would lead a host port to an address that may
// be another container's by now. (The new record is of this boot and
// names the same host veth, which Restore found.)
func restoreOne(root string, r Record, fullSetup bool) (bool, error) {
	name, err := fileName(r.Owner)
	if err != nil {
		return false, err
	}
	f, unlock, err := lockRecord(filepath.Join(Dir(root, r.Network), name))
	if err != nil {
		return false, err
	}
	defer unlock()
	if f == nil {
		return false, nil // its DEL ran meanwhile
	}
	if r, err = decodeRecord(f); err != nil {
		return false, err
	}
	a, err := r.Attachment(veth.PortGroup)
	if err != nil {
		return false, err
	}
	var opts []nat.Option
	if fullSetup {
		opts = append(opts, nat.ForceSetup())
	}
	if _, err := nat.Add(a, opts...); err != nil {
		return false, fmt.Errorf("restore %s: %w", r.Owner, err)
	}
	return true, nil
}

// linkExists reports whether the node has the link; an error counts as
// not knowing, and the record is left for the next restore.
func linkExists(name string) bool {
	ok, err := links.Exists(name)
	return err == nil && ok
}
