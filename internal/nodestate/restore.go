package nodestate

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/firewall"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodelock"
	"github.com/pier-cni/pier/internal/rtnl"
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
// sets its isolation and then its marker, under the node's lock. It
// returns the places of the host's filters it found.
func SetupBridge(lock string, s BridgeSpec) ([]firewall.Place, error) {
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return setupBridge(s)
}

func setupBridge(s BridgeSpec) ([]firewall.Place, error) {
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
	return places, nat.SetupBridge(nat.BridgeSetup{Bridge: s.Bridge, Isolated: s.Isolated, Note: note})
}

// TeardownBridge removes the bridge's host accepts and marker once no
// Pier attachment is left on it; when one is, or arrives while this runs
// (its ADD may have found the marker just before it went), the bridge is
// set up again. It reports whether the bridge was torn down.
//
// The first test is cheap: a bridge with carrier has a forwarding port.
// Only without carrier are its ports listed. So a bridge that keeps a port
// of someone else's keeps its accepts until a GC, which lists the ports.
func TeardownBridge(lock string, s BridgeSpec, precise bool) (bool, error) {
	if used, err := pierPorts(s.Bridge, precise); err != nil || used {
		return false, err
	}
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return false, err
	}
	defer unlock()
	if used, err := pierPorts(s.Bridge, true); err != nil || used {
		return false, err
	}
	var errs []error
	if s.Firewall {
		errs = append(errs, firewall.New().Remove(s.Bridge))
	}
	errs = append(errs, nat.RemoveBridge(s.Bridge))
	if err := errors.Join(errs...); err != nil {
		return false, err
	}
	if used, err := pierPorts(s.Bridge, true); err != nil || used {
		if err == nil {
			_, err = setupBridge(s)
		}
		return false, err
	}
	return true, nil
}

// pierPorts reports whether the bridge has ports of Pier's attachments. A
// missing bridge has none.
func pierPorts(name string, precise bool) (bool, error) {
	if !precise {
		carrier, err := bridge.HasCarrier(name)
		if errors.Is(err, bridge.ErrNotFound) {
			return false, nil
		}
		if err != nil || carrier {
			return carrier, err
		}
	}
	ports, err := bridge.Ports(name)
	if errors.Is(err, bridge.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(ports, func(p bridge.Port) bool { return strings.HasPrefix(p.Alias, "pier:") }), nil
}

// Restore puts the network's nftables state back from its records: the
// bridges' setup (when their marker is missing, or always with
// verifyBridges), then every live record's elements. It returns how many
// attachments it restored.
func Restore(p Paths, network string, verifyBridges bool, log *slog.Logger) (int, error) {
	recs, errs := Records(p.Root, network)
	boot, err := BootID()
	if err != nil {
		return 0, err
	}
	ready, err := nat.ReadyBridges()
	if err != nil {
		return 0, err
	}
	live := recs[:0]
	done := map[string]bool{}
	for _, r := range recs {
		if r.Boot != boot || !linkExists(r.HostVeth) {
			continue // an earlier boot's, or its container is gone: GC's to remove
		}
		live = append(live, r)
		if done[r.Bridge] || (ready[r.Bridge] && !verifyBridges) {
			continue
		}
		done[r.Bridge] = true
		if _, err := SetupBridge(p.Lock, r.Spec()); err != nil {
			errs = append(errs, fmt.Errorf("bridge %s: %w", r.Bridge, err))
		}
	}
	n := 0
	for _, r := range live {
		ok, err := restoreOne(p.Root, r)
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

// restoreOne re-adds the elements of the record at r's path under its
// lock. What it restores is the record read under the lock, not r, which
// Restore read before: the attachment may have been deleted and added
// again meanwhile (a runtime retrying a sandbox under the same ID), with
// other addresses, and r's would lead a host port to an address that may
// be another container's by now. (The new record is of this boot and
// names the same host veth, which Restore found.)
func restoreOne(root string, r Record) (bool, error) {
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
	if _, err := nat.Add(a); err != nil {
		return false, fmt.Errorf("restore %s: %w", r.Owner, err)
	}
	return true, nil
}

// linkExists reports whether the node has the link; an error counts as
// not knowing, and the record is left for the next restore.
func linkExists(name string) bool {
	ok, err := rtnl.LinkExists(name)
	return err == nil && ok
}
