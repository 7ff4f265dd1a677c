package nat

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// # Design notes: a bridge's setup adds, and deletes only what is wrong
//
// SetupBridge runs for a bridge's first container — and, since the last
// container's DEL removes the marker, for the first one after every time
// the bridge emptied — so its cost is paid by ordinary ADDs. It reads
// first (the table's sets, the two base chains and their rules, the
// isolation set and the marker: a few netlink round trips) and then
// queues only what is missing: on a node whose base objects are in place
// that is the marker set with its element, a batch that deletes nothing
// and leaves the kernel nothing to release, so closing the socket does
// not wait a grace period (see the package notes on cost). A chain whose
// rules differ from what Pier writes (compared expression by expression)
// is flushed and refilled in the same batch; a missing one is added and
// flushed (a no-op on a new chain) before its rules, so that a concurrent
// slow path that made it meanwhile still leaves it with exactly its
// rules. A marker whose comment must change is deleted and added again.

// BridgeSetup is what SetupBridge records for a bridge.
type BridgeSetup struct {
	Bridge string
	// Isolated drops new connections into the bridge from other
	// interfaces (ingressPolicy same-bridge); host ports and replies pass.
	Isolated bool
	// Note says what was done for the bridge outside Pier's tables; it is
	// the marker element's comment (shortened to nft's comment limit).
	Note string
}

// SetupBridge installs the table's base objects, the bridge's isolation
// (or removes it, when no longer asked for) and, last, its marker: from
// then on ADDs on the bridge take the fast path. What is already right is
// left as it is (see the notes above).
func SetupBridge(b BridgeSetup, opts ...Option) error {
	p, err := PlanBridge(b.Bridge, opts...)
	if err != nil {
		return err
	}
	defer p.Close()
	return p.Apply(b)
}

// BridgePlan is what table inet pier holds of a bridge's setup, read once
// on a socket that Apply then uses: a caller can look whether the bridge
// is set up already (Ready) and do its own work (the host's filters)
// before the batch, without reading twice.
type BridgePlan struct {
	bridge string
	conn   *nftables.Conn
	opts   []Option
	st     bridgeState
}

// PlanBridge reads the table's base objects and the bridge's marker and
// isolation.
func PlanBridge(bridge string, opts ...Option) (*BridgePlan, error) {
	if bridge == "" || len(bridge) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("nat: set up bridge %q: %w", bridge, ErrInvalid)
	}
	conn, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("nat: set up bridge %s: %w", bridge, err)
	}
	p := &BridgePlan{bridge: bridge, conn: conn, opts: opts}
	if p.st, err = readBridgeState(conn, bridge); err != nil {
		p.Close()
		return nil, fmt.Errorf("nat: read the setup of bridge %s (table inet %s): %w", bridge, TableName, err)
	}
	return p, nil
}

// Ready reports whether the bridge has its marker, and is isolated or not
// as asked.
func (p *BridgePlan) Ready(isolated bool) bool {
	return p.st.marker != nil && p.st.isolated == isolated
}

// Apply sets the bridge up as b says (b.Bridge must be the plan's). When
// the table changed since the read (a concurrent slow path, a flush), the
// batch fails as a whole and Apply reads and tries again.
func (p *BridgePlan) Apply(b BridgeSetup) error {
	if b.Bridge != p.bridge {
		return fmt.Errorf("nat: set up bridge %q with the plan of %q: %w", b.Bridge, p.bridge, ErrInvalid)
	}
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			if p.st, err = readBridgeState(p.conn, b.Bridge); err != nil {
				break
			}
		}
		err = flush(p.conn, func(c *nftables.Conn) error { return p.st.queue(c, b) })
		if !IsNotFound(err) && !isExist(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("nat: set up bridge %s (table inet %s): %w", b.Bridge, TableName, err)
	}
	return nil
}

// Close closes the plan's socket (or leaves it to the Closer of the
// options, see CloseLater).
func (p *BridgePlan) Close() { closeConn(p.conn, p.opts) }

// bridgeState is what table inet pier holds of the base objects and of
// one bridge's setup.
type bridgeState struct {
	table    bool
	sets     map[string]bool             // the table's sets by name
	chains   map[string][]*nftables.Rule // the base chains present, with their rules
	isolated bool                        // the bridge is in isolated-bridges
	marker   *nftables.SetElement        // the bridge's marker element; nil: none
}

// readBridgeState reads, in the usual case, the table's sets (one dump),
// the base chains' rules (two) and the elements of isolated-bridges and
// of the marker set where they exist.
func readBridgeState(conn *nftables.Conn, bridge string) (bridgeState, error) {
	st := bridgeState{sets: map[string]bool{}, chains: map[string][]*nftables.Rule{}}
	sets, err := conn.GetSets(pierTable())
	switch {
	case notFound(err):
		return st, nil // no table: everything is to be made
	case err != nil:
		return st, fmt.Errorf("list sets of table inet %s: %w", TableName, err)
	}
	st.table = true
	for _, s := range sets {
		st.sets[s.Name] = true
	}
	if err := st.readChains(conn); err != nil {
		return st, err
	}
	if st.sets[isolatedBridges] {
		els, err := conn.GetSetElements(isolatedSet())
		if err != nil {
			return st, fmt.Errorf("list elements of set %s: %w", isolatedBridges, err)
		}
		st.isolated = slices.ContainsFunc(els, func(e nftables.SetElement) bool { return ifnameOf(e.Key) == bridge })
	}
	if m := markerSet(bridge); st.sets[m.Name] {
		els, err := conn.GetSetElements(m)
		if err != nil {
			return st, fmt.Errorf("list elements of set %s: %w", m.Name, err)
		}
		if i := slices.IndexFunc(els, func(e nftables.SetElement) bool { return ifnameOf(e.Key) == bridge }); i >= 0 {
			st.marker = &els[i]
		}
	}
	return st, nil
}

// readChains reads the base chains' rules. A rule dump of a chain that
// does not exist is empty, as is that of a flushed one: only then is the
// chain itself looked up.
func (st *bridgeState) readChains(conn *nftables.Conn) error {
	for _, ch := range baseChains() {
		rules, err := conn.GetRules(pierTable(), ch.chain)
		if err != nil && !notFound(err) {
			return fmt.Errorf("list rules of chain %s: %w", ch.chain.Name, err)
		}
		if len(rules) == 0 {
			if _, err := conn.ListChain(pierTable(), ch.chain.Name); notFound(err) {
				continue
			} else if err != nil {
				return fmt.Errorf("get chain %s: %w", ch.chain.Name, err)
			}
		}
		st.chains[ch.chain.Name] = rules
	}
	return nil
}

// queue queues what turns st into b's setup.
func (st bridgeState) queue(c *nftables.Conn, b BridgeSetup) error {
	if !st.table {
		c.AddTable(pierTable())
	}
	var errs []error
	for _, s := range baseSets() {
		if !st.sets[s.Name] {
			errs = append(errs, c.AddSet(s, nil))
		}
	}
	for _, ch := range baseChains() {
		have, ok := st.chains[ch.chain.Name]
		if ok && sameRules(have, ch.rules) {
			continue
		}
		if !ok {
			c.AddChain(ch.chain)
		}
		c.FlushChain(ch.chain)
		for _, r := range ch.rules {
			c.AddRule(r.nftRule(ch.chain))
		}
	}
	isolation := []nftables.SetElement{{Key: ifnameKey(b.Bridge)}}
	pairs := []nftables.SetElement{{Key: pairKey(b.Bridge)}}
	switch {
	case b.Isolated && !st.isolated:
		errs = append(errs, c.SetAddElements(isolatedSet(), isolation), c.SetAddElements(isolatedPairsSet(), pairs))
	case !b.Isolated && st.isolated:
		errs = append(errs, c.SetDeleteElements(isolatedSet(), isolation), c.SetDeleteElements(isolatedPairsSet(), pairs))
	}
	return errors.Join(append(errs, st.queueMarker(c, b))...)
}

// queueMarker adds the marker set and its element, or rewrites the
// element when its comment is not b's note.
func (st bridgeState) queueMarker(c *nftables.Conn, b BridgeSetup) error {
	m := markerSet(b.Bridge)
	el := markerElement(b.Bridge, b.Note)
	switch {
	case !st.sets[m.Name]:
		return c.AddSet(m, []nftables.SetElement{el})
	case st.marker == nil:
		return c.SetAddElements(m, []nftables.SetElement{el})
	case st.marker.Comment != el.Comment:
		return errors.Join(c.SetDeleteElements(m, []nftables.SetElement{{Key: ifnameKey(b.Bridge)}}),
			c.SetAddElements(m, []nftables.SetElement{el}))
	}
	return nil
}

// sameRules reports whether a chain's rules are want: the same
// comments and expressions, as the kernel gives them back (which leaves
// out a lookup's batch-local set id).
func sameRules(have []*nftables.Rule, want []rule) bool {
	if len(have) != len(want) {
		return false
	}
	for i, r := range have {
		comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if comment != want[i].comment || len(r.Exprs) != len(want[i].exprs) {
			return false
		}
		for j, e := range r.Exprs {
			if !reflect.DeepEqual(withoutSetID(e), withoutSetID(want[i].exprs[j])) {
				return false
			}
		}
	}
	return true
}

func withoutSetID(e expr.Any) expr.Any {
	if l, ok := e.(*expr.Lookup); ok {
		c := *l
		c.SetID = 0
		return &c
	}
	return e
}

// notFound reports ENOENT, also from the reads of google/nftables v0.3.0
// that format their netlink error with %v, which errors.Is cannot see.
func notFound(err error) bool {
	return err != nil && (IsNotFound(err) || strings.HasSuffix(err.Error(), unix.ENOENT.Error()))
}
