package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// DataPlane writes network policy state into table inet pier of one
// network namespace (the node's). Its calls are not safe for concurrent
// use with each other: the engine serialises them.
//
// It keeps one netlink socket open across calls. Closing a socket makes
// the kernel wait for the deferred release of what its transactions
// deleted or replaced (an RCU grace period, about 10 ms here), which a
// plugin call must pay once but a daemon applying event after event need
// not: with the socket kept, a pod relabel that moves set elements
// commits in well under a millisecond instead of waiting for the grace
// period.
type DataPlane struct {
	opts []Option
	conn *nftables.Conn // nil until first use, and after a failure
}

// New returns a data plane acting where opts say.
func New(opts ...Option) *DataPlane { return &DataPlane{opts: opts} }

// socket returns the kept socket, opening it when needed.
func (dp *DataPlane) socket() (*nftables.Conn, error) {
	if dp.conn != nil {
		return dp.conn, nil
	}
	conn, err := dial(dp.opts)
	if err != nil {
		return nil, fmt.Errorf("network policy: %w", err)
	}
	dp.conn = conn
	return conn, nil
}

// done drops the kept socket after a failed call: a batch that failed
// may have left messages queued or acknowledgements unread.
func (dp *DataPlane) done(err error) error {
	if err != nil && dp.conn != nil {
		closeConn(dp.conn)
		dp.conn = nil
	}
	return err
}

// Close closes the kept socket.
func (dp *DataPlane) Close() {
	if dp.conn != nil {
		closeConn(dp.conn)
		dp.conn = nil
	}
}

// baseStep creates what every policy object hangs off: the table, the
// four address maps, the unclassified chain and the hooked base chains,
// each chain flushed and refilled. Existing maps keep their elements.
func baseStep(ids *setIDs) step {
	return step{weight: 8*objectWeight + 12*ruleWeight, msgs: 5 + 4 + 2*4 + 12, queue: func(c *nftables.Conn) error {
		return queueBase(c, ids)
	}}
}

func queueBase(c *nftables.Conn, ids *setIDs) error {
	c.AddTable(table())
	for _, m := range maps() {
		m.ID = ids.take()
		if err := c.AddSet(m, nil); err != nil {
			return fmt.Errorf("queue map %s: %w", m.Name, err)
		}
	}
	queueChain(c, regularChain(ChainUnclassified), []rule{unclassifiedRule()})
	for _, b := range baseChains {
		queueChain(c, b.chain(), b.rules())
	}
	return nil
}

// Apply makes one event's change (see Delta for the order). Objects it
// expects to exist must exist: an error (ENOENT after someone flushed the
// table, say) tells the caller to Resync.
func (dp *DataPlane) Apply(d Delta) error {
	if d.Empty() {
		return nil
	}
	conn, err := dp.socket()
	if err != nil {
		return err
	}
	return dp.done(apply(conn, d))
}

func apply(conn *nftables.Conn, d Delta) error {
	var ids setIDs
	var steps []step
	for _, s := range d.NewSets {
		steps = append(steps, newSetSteps(&ids, s)...)
	}
	for _, ch := range d.Elements {
		steps = append(steps, elementSteps(ch)...)
	}
	steps = append(steps, chainSteps(d.Policies, d.Pods)...)
	for _, p := range d.RemovePolicies {
		steps = append(steps, removeChainStep(p.Name()))
	}
	for _, s := range d.RemoveSets {
		steps = append(steps, removeSetStep(s))
	}
	if err := runSteps(conn, steps); err != nil {
		return fmt.Errorf("network policy: update table inet %s: %w", TableName, err)
	}
	if err := repoint(conn, d.Pointers, false); err != nil {
		return fmt.Errorf("network policy: point pod addresses at their chains: %w", err)
	}
	if err := unpoint(conn, d.Unpoint); err != nil {
		return fmt.Errorf("network policy: remove pierd's elements of gone addresses: %w", err)
	}
	return nil
}

func chainSteps(policies []PolicyChain, pods []PodChain) []step {
	var steps []step
	for _, p := range policies {
		steps = append(steps, chainStep(p.Name(), p.rules()))
	}
	for _, p := range pods {
		steps = append(steps, chainStep(p.Name(), p.rules()))
	}
	return steps
}

// newSetSteps creates a set pair and fills it, in chunks.
func newSetSteps(ids *setIDs, s SetMembers) []step {
	steps := []step{{weight: 2 * objectWeight, msgs: 2, queue: func(c *nftables.Conn) error {
		for _, f := range families {
			set := s.set(f)
			set.ID = ids.take()
			if err := c.AddSet(set, nil); err != nil {
				return fmt.Errorf("queue set %s: %w", set.Name, err)
			}
		}
		return nil
	}}}
	return append(steps, elementSteps(ElementChange{Set: s.Name, Kind: s.Kind, Add: s.Members})...)
}

// elementSteps removes and adds members, split by family and in chunks.
func elementSteps(ch ElementChange) []step {
	spec := SetSpec{Name: ch.Set, Kind: ch.Kind}
	var steps []step
	for _, op := range []struct {
		members []Member
		add     bool
	}{{ch.Remove, false}, {ch.Add, true}} {
		for _, f := range families {
			var els []nftables.SetElement
			for _, m := range op.members {
				if m.Addr.Unmap().Is6() == f.v6 {
					els = append(els, spec.element(m))
				}
			}
			set := spec.set(f)
			for len(els) > 0 {
				n := min(len(els), elemsPerChunk)
				chunk, add := els[:n], op.add
				els = els[n:]
				steps = append(steps, step{weight: elemWeight * n, msgs: 1, queue: func(c *nftables.Conn) error {
					if add {
						return c.SetAddElements(set, chunk)
					}
					return c.SetDeleteElements(set, chunk)
				}})
			}
		}
	}
	return steps
}

func removeChainStep(name string) step {
	return step{weight: 2 * objectWeight, msgs: 2, queue: func(c *nftables.Conn) error {
		ch := regularChain(name)
		c.FlushChain(ch)
		c.DelChain(ch)
		return nil
	}}
}

func removeSetStep(s SetSpec) step {
	return step{weight: 2 * objectWeight, msgs: 2, queue: func(c *nftables.Conn) error {
		for _, f := range families {
			c.DelSet(s.set(f))
		}
		return nil
	}}
}

// removePodChains deletes each chain in a batch of its own; the kernel
// refuses (EBUSY) while an element still leads to it, and then it stays.
// It returns the chains still there.
func removePodChains(conn *nftables.Conn, pods []PodChain) ([]PodChain, error) {
	var left []PodChain
	for _, p := range pods {
		ch := regularChain(p.Name())
		conn.FlushChain(ch)
		conn.DelChain(ch)
		err := conn.Flush()
		switch {
		case err == nil, IsNotFound(err):
		case isBusy(err):
			left = append(left, p)
		default:
			return left, fmt.Errorf("delete chain %s: %w", p.Name(), err)
		}
	}
	return left, nil
}

// mapElement is one element of an address map as read back.
type mapElement struct {
	addr    netip.Addr
	kind    expr.VerdictKind
	chain   string
	comment string
}

// readMap reads an address map; a missing map has no elements.
func readMap(conn *nftables.Conn, m *nftables.Set) (map[netip.Addr]mapElement, error) {
	els, err := listSet(conn, m)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]mapElement, len(els))
	for _, e := range els {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			continue
		}
		kind, chain := DecodeVerdict(e.Val)
		out[a] = mapElement{addr: a, kind: kind, chain: chain, comment: e.Comment}
	}
	return out, nil
}

// listSet reads a set's elements; a missing set has none. GetSetElements
// formats the kernel's errno with %v, so ENOENT is learnt from
// GetSetByName before and, on error, after.
func listSet(conn *nftables.Conn, s *nftables.Set) ([]nftables.SetElement, error) {
	got, err := conn.GetSetByName(s.Table, s.Name)
	if err != nil {
		if IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get set %s: %w", s.Name, err)
	}
	els, err := conn.GetSetElements(got)
	if err != nil {
		if _, again := conn.GetSetByName(s.Table, s.Name); IsNotFound(again) {
			return nil, nil
		}
		return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
	}
	return els, nil
}

// pointerComment marks the elements pierd adds itself (after a flushed
// table), apart from the plugin's, whose comment names the attachment.
const pointerComment = "pierd: "

// repoint makes the maps' elements of each pointer's address lead to the
// pod's chains where they lead to ChainUnclassified, or where pierd added
// them itself for another pod (the address's owner changed: the engine
// names one pod per address); elements the plugin added leading elsewhere
// are left alone (another pod's ADD owns the address now). With
// addMissing, an address without element gets one (see State.Pointers).
func repoint(conn *nftables.Conn, ptrs []Pointer, addMissing bool) error {
	if len(ptrs) == 0 {
		return nil
	}
	read := map[string]map[netip.Addr]mapElement{}
	var steps []step
	for _, p := range ptrs {
		a := p.Addr.Unmap()
		f := familyOf(a)
		for _, d := range []Direction{Ingress, Egress} {
			m := addrMap(mapName(d, f), f)
			if _, ok := read[m.Name]; !ok {
				els, err := readMap(conn, m)
				if err != nil {
					return err
				}
				read[m.Name] = els
			}
			want := nftables.SetElement{Key: a.AsSlice(), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: PodChainName(p.Pod, d)}}
			have, ok := read[m.Name][a]
			switch {
			case !ok && addMissing:
				want.Comment = clampComment(pointerComment + p.Pod.String())
				steps = append(steps, step{weight: elemWeight, msgs: 1, queue: func(c *nftables.Conn) error {
					return c.SetAddElements(m, []nftables.SetElement{want})
				}})
			case ok && (have.chain == ChainUnclassified || strings.HasPrefix(have.comment, pointerComment) && have.chain != want.VerdictData.Chain):
				want.Comment = have.comment
				if have.chain != ChainUnclassified {
					want.Comment = clampComment(pointerComment + p.Pod.String())
				}
				steps = append(steps, step{weight: 2 * elemWeight, msgs: 2, queue: func(c *nftables.Conn) error {
					return errors.Join(c.SetDeleteElements(m, []nftables.SetElement{{Key: want.Key}}), c.SetAddElements(m, []nftables.SetElement{want}))
				}})
			}
		}
	}
	return runSteps(conn, steps)
}

// unpoint deletes the elements pierd added itself (its comment names the
// pod) for addresses the pod no longer has.
func unpoint(conn *nftables.Conn, ptrs []Pointer) error {
	if len(ptrs) == 0 {
		return nil
	}
	var refs []elemRef
	for _, m := range maps() {
		els, err := readMap(conn, m)
		if err != nil {
			return err
		}
		for _, p := range ptrs {
			a := p.Addr.Unmap()
			if e, ok := els[a]; ok && e.comment == clampComment(pointerComment+p.Pod.String()) {
				refs = append(refs, elemRef{m, a.AsSlice()})
			}
		}
	}
	return runSteps(conn, deleteSteps(refs))
}
