package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// This file is what the plugin needs: the elements an ADD puts in the
// address maps (in the ADD's own transaction, see Attachment), and their
// removal on DEL and GC. It must stay cheap to link: nothing here knows
// Kubernetes.

// Attachment is a container attachment's entry into the address maps: two
// elements per address (ingress and egress map of its family), each
// leading to the pod's chain of that direction when pierd has made it,
// else to ChainUnclassified. It rides in the ADD's nftables transaction
// (internal/nat calls its methods): Resolve looks the pod's chain up, the
// fast path only adds the elements; when the maps are missing (or the
// pod's chains went between the lookup and the batch) the batch fails
// with ENOENT, and the slow path reads what exists (Prepare), creates the
// base objects if missing and falls back to ChainUnclassified
// (QueueSetup, QueueAdds).
type Attachment struct {
	// Pod is the Kubernetes pod (K8S_POD_NAMESPACE, K8S_POD_NAME); the
	// zero Ref (no pod known) leads to ChainUnclassified.
	Pod   Ref
	Addrs []netip.Addr
	// Owner is the elements' comment, naming the attachment for DEL, GC
	// and `pierctl inspect`.
	Owner string

	unclassified bool
	missingBase  bool
	ids          setIDs
	collide      []elemRef // present elements leading elsewhere, replaced
}

type elemRef struct {
	set *nftables.Set
	key []byte
}

// target is the chain the elements of direction d lead to.
func (a *Attachment) target(d Direction) string {
	if a.unclassified || a.Pod == (Ref{}) {
		return ChainUnclassified
	}
	return PodChainName(a.Pod, d)
}

// wanted lists the elements by map.
func (a *Attachment) wanted() map[*nftables.Set][]nftables.SetElement {
	out := map[*nftables.Set][]nftables.SetElement{}
	byName := map[string]*nftables.Set{}
	for _, addr := range dedupAddrs(a.Addrs) {
		f := familyOf(addr)
		for _, d := range []Direction{Ingress, Egress} {
			name := mapName(d, f)
			m, ok := byName[name]
			if !ok {
				m = addrMap(name, f)
				byName[name] = m
			}
			out[m] = append(out[m], nftables.SetElement{Key: addr.AsSlice(), Comment: clampComment(a.Owner),
				VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: a.target(d)}})
		}
	}
	return out
}

// Resolve runs before the fast batch: when the pod's ingress chain does
// not exist (pierd has not seen the pod yet, or does not run), the
// elements lead to ChainUnclassified from the start. Without it, the
// batch of every such ADD would fail (ENOENT on the goto), costing a
// failed transaction and the slow path, which a caller takes for a
// flushed table (and then restores every attachment of the network). It
// is one lookup of a chain by name; an answer other than "no such chain"
// leaves the pod's chains as the target, and the batch decides.
func (a *Attachment) Resolve(c *nftables.Conn) error {
	a.unclassified = false
	if a.Pod == (Ref{}) {
		return nil
	}
	_, err := c.ListChain(table(), PodChainName(a.Pod, Ingress))
	a.unclassified = isNotFoundText(err)
	return nil
}

// isNotFoundText reports ENOENT from a lookup of google/nftables v0.3.0
// that formats its netlink error with %v, which errors.Is cannot see.
func isNotFoundText(err error) bool {
	return err != nil && (IsNotFound(err) || strings.HasSuffix(err.Error(), unix.ENOENT.Error()))
}

// QueueAdds queues the element additions.
func (a *Attachment) QueueAdds(c *nftables.Conn) error {
	var errs []error
	for m, els := range a.wanted() {
		errs = append(errs, c.SetAddElements(m, els))
	}
	return errors.Join(errs...)
}

// Prepare reads which base objects and pod chains exist and which of the
// addresses already have elements leading elsewhere (a stale element, or
// an earlier ADD that fell back to ChainUnclassified).
func (a *Attachment) Prepare(c *nftables.Conn) error {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	have := map[string]bool{}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			have[ch.Name] = true
		}
	}
	a.missingBase = !have[ChainUnclassified]
	for _, b := range baseChains {
		a.missingBase = a.missingBase || !have[b.name]
	}
	a.unclassified = !have[PodChainName(a.Pod, Ingress)] || !have[PodChainName(a.Pod, Egress)]
	a.collide = nil
	for m, els := range a.wanted() {
		present, err := readMap(c, m)
		if err != nil {
			return err
		}
		for _, e := range els {
			addr, _ := netip.AddrFromSlice(e.Key)
			if p, ok := present[addr]; ok && (p.kind != expr.VerdictGoto || p.chain != e.VerdictData.Chain) {
				a.collide = append(a.collide, elemRef{m, e.Key})
			}
		}
	}
	return nil
}

// QueueSetup queues the base objects when some are missing, and the
// removal of colliding elements, so QueueAdds after it succeeds.
func (a *Attachment) QueueSetup(c *nftables.Conn) error {
	if a.missingBase {
		if err := queueBase(c, &a.ids); err != nil {
			return err
		}
	}
	var errs []error
	for _, r := range a.collide {
		errs = append(errs, c.SetDeleteElements(r.set, []nftables.SetElement{{Key: r.key}}))
	}
	return errors.Join(errs...)
}

// Unclassified reports whether the last slow path fell back to
// ChainUnclassified (the pod's chains did not exist yet).
func (a *Attachment) Unclassified() bool { return a.unclassified || a.Pod == (Ref{}) }

func dedupAddrs(addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a = a.Unmap(); a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// Element is one element of the address maps.
type Element struct {
	Addr  netip.Addr
	Dir   Direction
	Chain string // the chain it leads to
	Owner string // its comment
}

// ListElements reads the address maps; missing maps hold none.
func ListElements(opts ...Option) ([]Element, error) {
	conn, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("network policy: %w", err)
	}
	defer closeConn(conn)
	var out []Element
	for _, m := range maps() {
		els, err := readMap(conn, m)
		if err != nil {
			return nil, fmt.Errorf("network policy: read map %s: %w", m.Name, err)
		}
		d := Ingress
		if m.Name == mapEgress4 || m.Name == mapEgress6 {
			d = Egress
		}
		for _, e := range els {
			out = append(out, Element{Addr: e.addr, Dir: d, Chain: e.chain, Owner: e.comment})
		}
	}
	slices.SortFunc(out, func(a, b Element) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return int(a.Dir) - int(b.Dir)
	})
	return out, nil
}

// RemoveElements deletes the addresses' elements from the maps. Elements,
// maps or a table already gone are no error, so DEL can run any number of
// times: the first batch deletes every key; when it fails with ENOENT, the
// maps are read and the keys still present deleted.
func RemoveElements(addrs []netip.Addr, opts ...Option) error {
	addrs = dedupAddrs(addrs)
	if len(addrs) == 0 {
		return nil
	}
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("network policy: %w", err)
	}
	defer release(conn, opts)
	var refs []elemRef
	for _, a := range addrs {
		f := familyOf(a)
		for _, d := range []Direction{Ingress, Egress} {
			refs = append(refs, elemRef{addrMap(mapName(d, f), f), a.AsSlice()})
		}
	}
	for attempt := 0; len(refs) > 0; attempt++ {
		err := runSteps(conn, deleteSteps(refs))
		if !IsNotFound(err) {
			if err != nil {
				return fmt.Errorf("network policy: remove elements of %v: %w", addrs, err)
			}
			return nil
		}
		if attempt == 3 {
			return fmt.Errorf("network policy: elements keep changing under concurrent updates: %w", err)
		}
		if refs, err = presentRefs(conn, refs); err != nil {
			return fmt.Errorf("network policy: %w", err)
		}
	}
	return nil
}

// deleteSteps deletes refs, grouped by map and chunked, so that a large
// GC stays within the batch limits.
func deleteSteps(refs []elemRef) []step {
	bySet := map[string][]nftables.SetElement{}
	sets := map[string]*nftables.Set{}
	var order []string
	for _, r := range refs {
		if _, ok := sets[r.set.Name]; !ok {
			sets[r.set.Name] = r.set
			order = append(order, r.set.Name)
		}
		bySet[r.set.Name] = append(bySet[r.set.Name], nftables.SetElement{Key: r.key})
	}
	var steps []step
	for _, name := range order {
		els, set := bySet[name], sets[name]
		for len(els) > 0 {
			n := min(len(els), elemsPerChunk)
			chunk := els[:n]
			els = els[n:]
			steps = append(steps, step{weight: elemWeight * n, msgs: 1, queue: func(c *nftables.Conn) error {
				return c.SetDeleteElements(set, chunk)
			}})
		}
	}
	return steps
}

func presentRefs(conn *nftables.Conn, refs []elemRef) ([]elemRef, error) {
	read := map[string]map[netip.Addr]mapElement{}
	var out []elemRef
	for _, r := range refs {
		els, ok := read[r.set.Name]
		if !ok {
			var err error
			if els, err = readMap(conn, r.set); err != nil {
				return nil, err
			}
			read[r.set.Name] = els
		}
		a, _ := netip.AddrFromSlice(r.key)
		if _, ok := els[a]; ok {
			out = append(out, r)
		}
	}
	return out, nil
}
