package netpol

import (
	"net/netip"
	"slices"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// selectorSet is one peer selector's set pair: the addresses of the pods
// it picks, cluster-wide. Policies with equal selectors share it.
type selectorSet struct {
	sel     peerSelector
	refs    int
	members map[netip.Addr]dataplane.Ref // the pod each address is there for
}

// portSet is the set pair of one container port name: address, protocol
// and port of every pod's container port so named.
type portSet struct {
	name    string
	refs    int
	members map[netip.Addr][]dataplane.Member
}

// change collects one event's delta, element changes merged per set.
type change struct {
	d     dataplane.Delta
	elems map[string]*dataplane.ElementChange
	order []string
	// gone are chains of pods that left: to remove once nothing leads to
	// them.
	gone []dataplane.PodChain
}

func newChange() *change { return &change{elems: map[string]*dataplane.ElementChange{}} }

func (c *change) elem(set string, kind dataplane.SetKind) *dataplane.ElementChange {
	ec, ok := c.elems[set]
	if !ok {
		ec = &dataplane.ElementChange{Set: set, Kind: kind}
		c.elems[set] = ec
		c.order = append(c.order, set)
	}
	return ec
}

func (c *change) delta() dataplane.Delta {
	d := c.d
	for _, name := range c.order {
		if ec, ok := c.elems[name]; ok && len(ec.Add)+len(ec.Remove) > 0 {
			d.Elements = append(d.Elements, *ec)
		}
	}
	return d
}

// owner is the pod that holds addr, of those that can be peers at it
// (normally one; two while an address moves from a pod being deleted to a
// new one: see podState.owns), or nil. Only the owner's labels and ports
// count for the address: a new pod must not get the peer rights of the
// pod whose address it was given.
func (e *Engine) owner(addr netip.Addr) *podState {
	var best *podState
	for _, p := range e.byAddr[addr] {
		if best == nil || p.owns(best) {
			best = p
		}
	}
	return best
}

// selectorPod is the pod that puts addr into s, if any: addr's owner, if
// s picks it.
func (e *Engine) selectorPod(s *selectorSet, addr netip.Addr) (dataplane.Ref, bool) {
	p := e.owner(addr)
	if p == nil || !s.sel.matches(p, e.nsLabels(p.ref.Namespace)) {
		return dataplane.Ref{}, false
	}
	return p.ref, true
}

// portMembers are addr's entries in the set of port name: its owner's
// ports of that name.
func (e *Engine) portMembers(name string, addr netip.Addr) []dataplane.Member {
	var out []dataplane.Member
	if p := e.owner(addr); p != nil {
		for _, np := range p.ports {
			m := dataplane.Member{Addr: addr, Proto: np.proto, Port: np.port, Pod: p.ref}
			if np.name == name && !slices.ContainsFunc(out, func(o dataplane.Member) bool { return o.Proto == m.Proto && o.Port == m.Port }) {
				out = append(out, m)
			}
		}
	}
	slices.SortFunc(out, func(a, b dataplane.Member) int {
		return int(a.Proto)<<16 + int(a.Port) - int(b.Proto)<<16 - int(b.Port)
	})
	return out
}

// refreshMembers recomputes, for the given addresses, the membership of
// every selector set (those only keep accepts, when given) and every
// port set, recording the differences.
func (e *Engine) refreshMembers(ch *change, addrs []netip.Addr, only func(*selectorSet) bool) {
	if len(addrs) == 0 {
		return
	}
	for name, s := range e.sets {
		if only != nil && !only(s) {
			continue
		}
		for _, a := range addrs {
			have, in := s.members[a]
			want, ok := e.selectorPod(s, a)
			switch {
			case ok && !in:
				s.members[a] = want
				ch.elem(name, dataplane.Addresses).Add = append(ch.elem(name, dataplane.Addresses).Add, dataplane.Member{Addr: a, Pod: want})
			case !ok && in:
				delete(s.members, a)
				ch.elem(name, dataplane.Addresses).Remove = append(ch.elem(name, dataplane.Addresses).Remove, dataplane.Member{Addr: a, Pod: have})
			case ok:
				s.members[a] = want // another pod of the same address: no kernel change
			}
		}
	}
	if only != nil {
		return // namespace labels do not change ports
	}
	for _, ps := range e.ports {
		for _, a := range addrs {
			e.refreshPortAddr(ch, ps, a)
		}
	}
}

func (e *Engine) refreshPortAddr(ch *change, ps *portSet, a netip.Addr) {
	setName := dataplane.PortSetName(ps.name)
	have, want := ps.members[a], e.portMembers(ps.name, a)
	same := func(x, y dataplane.Member) bool { return x.Proto == y.Proto && x.Port == y.Port }
	for _, h := range have {
		if !slices.ContainsFunc(want, func(w dataplane.Member) bool { return same(h, w) }) {
			ec := ch.elem(setName, dataplane.PortTuples)
			ec.Remove = append(ec.Remove, h)
		}
	}
	for _, w := range want {
		if !slices.ContainsFunc(have, func(h dataplane.Member) bool { return same(h, w) }) {
			ec := ch.elem(setName, dataplane.PortTuples)
			ec.Add = append(ec.Add, w)
		}
	}
	if len(want) == 0 {
		delete(ps.members, a)
	} else {
		ps.members[a] = want
	}
}

// refSelector takes a reference on a selector's set, creating and filling
// it when it is new.
func (e *Engine) refSelector(ch *change, sel peerSelector) {
	name := sel.setName()
	if s, ok := e.sets[name]; ok {
		s.refs++
		return
	}
	s := &selectorSet{sel: sel, refs: 1, members: map[netip.Addr]dataplane.Ref{}}
	e.sets[name] = s
	nm := dataplane.SetMembers{SetSpec: dataplane.SetSpec{Name: name, Kind: dataplane.Addresses, Comment: sel.describe()}}
	for a := range e.byAddr {
		if ref, ok := e.selectorPod(s, a); ok {
			s.members[a] = ref
			nm.Members = append(nm.Members, dataplane.Member{Addr: a, Pod: ref})
		}
	}
	ch.d.NewSets = append(ch.d.NewSets, nm)
}

func (e *Engine) unrefSelector(ch *change, name string) {
	s, ok := e.sets[name]
	if !ok {
		return
	}
	if s.refs--; s.refs > 0 {
		return
	}
	delete(e.sets, name)
	delete(ch.elems, name)
	ch.d.RemoveSets = append(ch.d.RemoveSets, dataplane.SetSpec{Name: name, Kind: dataplane.Addresses})
}

func (e *Engine) refPort(ch *change, name string) {
	if ps, ok := e.ports[name]; ok {
		ps.refs++
		return
	}
	ps := &portSet{name: name, refs: 1, members: map[netip.Addr][]dataplane.Member{}}
	e.ports[name] = ps
	nm := dataplane.SetMembers{SetSpec: dataplane.SetSpec{Name: dataplane.PortSetName(name), Kind: dataplane.PortTuples,
		Comment: "pier: container ports named " + name}}
	for a := range e.byAddr {
		if ms := e.portMembers(name, a); len(ms) > 0 {
			ps.members[a] = ms
			nm.Members = append(nm.Members, ms...)
		}
	}
	ch.d.NewSets = append(ch.d.NewSets, nm)
}

func (e *Engine) unrefPort(ch *change, name string) {
	ps, ok := e.ports[name]
	if !ok {
		return
	}
	if ps.refs--; ps.refs > 0 {
		return
	}
	delete(e.ports, name)
	setName := dataplane.PortSetName(name)
	delete(ch.elems, setName)
	ch.d.RemoveSets = append(ch.d.RemoveSets, dataplane.SetSpec{Name: setName, Kind: dataplane.PortTuples})
}

// state is the whole desired data plane, for a resync.
func (e *Engine) state() dataplane.State {
	var s dataplane.State
	for name, set := range e.sets {
		sm := dataplane.SetMembers{SetSpec: dataplane.SetSpec{Name: name, Kind: dataplane.Addresses, Comment: set.sel.describe()}}
		for a, ref := range set.members {
			sm.Members = append(sm.Members, dataplane.Member{Addr: a, Pod: ref})
		}
		s.Sets = append(s.Sets, sm)
	}
	for name, ps := range e.ports {
		sm := dataplane.SetMembers{SetSpec: dataplane.SetSpec{Name: dataplane.PortSetName(name), Kind: dataplane.PortTuples,
			Comment: "pier: container ports named " + name}}
		for _, ms := range ps.members {
			sm.Members = append(sm.Members, ms...)
		}
		s.Sets = append(s.Sets, sm)
	}
	for ref, pol := range e.policies {
		for _, d := range directions {
			if pol.dirs[d] {
				s.Policies = append(s.Policies, dataplane.PolicyChain{Policy: ref, Dir: d, Rules: pol.rules[d]})
			}
		}
	}
	for _, c := range e.chains {
		s.Pods = append(s.Pods, c)
	}
	for a := range e.byAddr {
		if ref, ok := e.localOwner(a); ok {
			s.Pointers = append(s.Pointers, dataplane.Pointer{Addr: a, Pod: ref})
		}
	}
	return s
}

// localOwner is the pod whose chains addr leads to: addr's owner, when it
// is a pod of this node still running.
func (e *Engine) localOwner(addr netip.Addr) (dataplane.Ref, bool) {
	p := e.owner(addr)
	if p == nil || !p.localTo(e.cfg.NodeName) || p.finished {
		return dataplane.Ref{}, false
	}
	return p.ref, true
}
