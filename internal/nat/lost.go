package nat

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// # Design notes: a flushed table that keeps its sets
//
// `nft flush table inet pier` (or `nft flush chain …`) removes the rules
// and keeps the chains, sets and elements. The ADD fast path only adds
// elements, which still succeeds, and the bridges' markers are still
// there, so neither notices: masquerade, DNAT, the localnet drop and the
// isolation rule stay gone. Every chain Pier makes always holds rules, so
// a chain of Pier's that exists without any is one that was flushed.
//
//   - The fast path reads the rules of one chain after its batch, chain
//     localnet (one netlink dump of its two rules): empty, the table lost
//     its rules, and the slow path sets everything up again.
//   - FindLostRules reads every chain of Pier's tables (CHECK, GC, the
//     restore after a slow path, pierd's watcher), and RepairRules refills
//     those that need nothing but their name: the base chains, the host
//     port chains, the RA guard's. A network's masquerade chains need its
//     subnets, which its attachment records have: a restore of the
//     network sets them up again through one attachment (ForceSetup).

// Lost names the chains of Pier's tables that exist without their rules.
type Lost struct {
	// Chains are "inet pier localnet", … for messages.
	Chains []string
	// shared: a chain every network uses (base, host ports, RA guard).
	shared bool
	// networks are the object bases (see objectNames) of networks whose
	// masquerade chains lost their rules.
	networks map[string]bool
}

// Any reports whether some chain lost its rules.
func (l Lost) Any() bool { return len(l.Chains) > 0 }

// Shared reports whether a chain that needs nothing but its name lost its
// rules: RepairRules puts them back.
func (l Lost) Shared() bool { return l.shared }

// Network reports whether the network's masquerade chains lost their
// rules: they come back with an attachment of the network's subnets added
// with ForceSetup.
func (l Lost) Network(name string) bool { return l.networks[objectNames(name).base] }

func (l Lost) String() string { return strings.Join(l.Chains, ", ") }

// sharedChains are the chains of the node-wide setup, by table family.
var sharedChains = map[nftables.TableFamily][]string{
	nftables.TableFamilyINet:   {localnetChain, forwardChain, hostPortsChain, hostPortsPre, hostPortsOutput, hostPortsSNAT},
	nftables.TableFamilyBridge: {l2Chain},
}

// FindLostRules reads which chains of Pier's tables lost their rules.
// Missing tables and chains lose nothing (what their absence costs, the
// bridges' markers and the fast path's ENOENT tell). Chains of other
// features in the table (network policy's, np-…) are theirs to watch.
func FindLostRules(opts ...Option) (Lost, error) {
	conn, err := dial(opts)
	if err != nil {
		return Lost{}, fmt.Errorf("nat: read Pier's chains: %w", err)
	}
	defer closeConn(conn, opts)
	lost, err := findLost(conn)
	if err != nil {
		return Lost{}, fmt.Errorf("nat: read Pier's chains: %w", err)
	}
	return lost, nil
}

func findLost(conn *nftables.Conn) (Lost, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return Lost{}, fmt.Errorf("list chains: %w", err)
	}
	lost := Lost{networks: map[string]bool{}}
	var maps map[string]bool // of table inet pier, read when a chain may be a network's
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != TableName {
			continue
		}
		shared := slices.Contains(sharedChains[ch.Table.Family], ch.Name)
		base, isNet := "", false
		if !shared && ch.Table.Family == nftables.TableFamilyINet {
			if maps == nil {
				if maps, err = mapNames(conn); err != nil {
					return Lost{}, err
				}
			}
			base, isNet = networkOfChain(ch.Name, maps)
		}
		if !shared && !isNet {
			continue
		}
		rules, err := conn.GetRules(ch.Table, ch)
		if err != nil {
			return Lost{}, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		if len(rules) > 0 {
			continue
		}
		lost.Chains = append(lost.Chains, familyName(ch.Table.Family)+" "+TableName+" "+ch.Name)
		lost.shared = lost.shared || shared
		if isNet {
			lost.networks[base] = true
		}
	}
	return lost, nil
}

func mapNames(conn *nftables.Conn) (map[string]bool, error) {
	sets, err := conn.GetSets(pierTable())
	if err != nil {
		return nil, fmt.Errorf("list sets of table inet %s: %w", TableName, err)
	}
	out := make(map[string]bool, len(sets))
	for _, s := range sets {
		out[s.Name] = true
	}
	return out, nil
}

// networkOfChain tells a network's base or generation chain by its name
// and its network's masquerade map, and returns the network's object base.
func networkOfChain(chain string, maps map[string]bool) (string, bool) {
	if base, ok := strings.CutSuffix(chain, "-postrouting"); ok && maps[base+"-masq4"] {
		return base, true
	}
	i := strings.LastIndex(chain, genInfix)
	if i <= 0 {
		return "", false
	}
	base := chain[:i]
	if !maps[base+"-masq4"] || !(objects{base: base}).isGenChain(chain) {
		return "", false
	}
	return base, true
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyBridge {
		return "bridge"
	}
	return "inet"
}

// RepairRules refills, in one transaction, the shared chains that lost
// their rules (see Lost.Shared); group is the device group of Pier's host
// veths, which the RA guard matches. Chains that kept their rules are
// left alone.
func RepairRules(lost Lost, group uint32, opts ...Option) error {
	if !lost.shared {
		return nil
	}
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("nat: repair Pier's chains: %w", err)
	}
	defer closeConn(conn, opts)
	has := func(family, chain string) bool { return slices.Contains(lost.Chains, family+" "+TableName+" "+chain) }
	err = flush(conn, func(c *nftables.Conn) error {
		var errs []error
		if has("inet", localnetChain) || has("inet", forwardChain) {
			errs = append(errs, queueBaseSetup(c))
		}
		if slices.ContainsFunc([]string{hostPortsChain, hostPortsPre, hostPortsOutput, hostPortsSNAT}, func(ch string) bool { return has("inet", ch) }) {
			errs = append(errs, queuePortsSetup(c))
		}
		if has("bridge", l2Chain) {
			errs = append(errs, queueL2Setup(c, group))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("nat: repair %s: %w", lost, err)
	}
	return nil
}

// baseLost reports whether chain localnet, which every setup of the
// table fills, has no rules: the fast path's one read (see the notes).
func baseLost(conn *nftables.Conn) (bool, error) {
	rules, err := conn.GetRules(pierTable(), &nftables.Chain{Name: localnetChain, Table: pierTable()})
	if err != nil {
		return false, fmt.Errorf("list rules of chain %s: %w", localnetChain, err)
	}
	return len(rules) == 0, nil
}
