package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Attachment is everything one container attachment puts in nftables:
// masquerade elements of its network (ipMasq), host port mappings, its
// port's MAC check. Add installs it all in one transaction when the
// objects it needs exist, which is every ADD but a node's first.
type Attachment struct {
	// Network names the masquerade maps; its subnets choose the
	// generation chain (see AddMasq).
	Network Network
	// Owner is "<containerID>/<ifname>". Masquerade elements carry it as
	// their comment; the node-wide elements (ports, MAC check), which are
	// not in per-network objects, carry NodeOwner(network, Owner).
	Owner string
	// Masq are the container addresses to masquerade; none without ipMasq.
	Masq  []netip.Addr
	Ports []PortMapping
	Spoof *SpoofCheck // nil: no MAC check
	// Sources binds the port to the addresses it may send from; nil: no
	// source address check (see sources.go).
	Sources *SourceCheck
	// Bridge is the container's bridge; its name goes into the set
	// "bridges" of table bridge pier (see l2.go) and into its marker set
	// (see bridge.go). Empty: neither.
	Bridge string
	// GuardGroup is the device group of Pier's host veths, from which
	// router advertisements are dropped.
	GuardGroup uint32
	// Extra is elements another package owns (network policy) that ride
	// in the same transaction; nil: none.
	Extra Extra
}

// Extra is a part of an ADD's transaction that another package owns.
// Resolve runs first, on the same socket, and may make a cheap read (it is
// on every ADD's path) to choose what its additions are. They join the
// fast path's batch; when that batch fails (ENOENT, EEXIST), Prepare runs
// before each slow-path batch and may read the ruleset to decide what
// QueueSetup (objects it needs, removal of elements its additions would
// collide with) and QueueAdds queue next.
type Extra interface {
	Resolve(c *nftables.Conn) error
	QueueAdds(c *nftables.Conn) error
	Prepare(c *nftables.Conn) error
	QueueSetup(c *nftables.Conn) error
}

// NodeOwner is the comment of an attachment's node-wide elements:
// "<network>/<containerID>/<ifname>", shortened as StoredOwner does. The
// network comes first so GC can pick its own network's elements even from
// a shortened comment.
func NodeOwner(network, owner string) string { return StoredOwner(network + "/" + owner) }

// batch is an attachment's elements by set, ready to queue.
type batch struct {
	masq   *spec
	ups    []mapUpdate
	ports  []portElems
	l2     []setElems
	marker string // the bridge whose marker the batch touches; "" for none
	extra  Extra
}

type setElems struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

func (a Attachment) plan() (batch, error) {
	b := batch{extra: a.Extra}
	var errs []error
	if len(a.Masq) > 0 {
		s, err := newSpec(a.Network)
		a4, a6, aerr := splitAddrs(a.Masq)
		if err = errors.Join(err, aerr); err != nil {
			return b, err
		}
		b.masq = &s
		b.ups = elementsByMap(s, a4, a6, StoredOwner(a.Owner))
	}
	if err := validateName(a.Network.Name); err != nil {
		return b, err
	}
	errs = append(errs, validateOwner(a.Owner))
	node := NodeOwner(a.Network.Name, a.Owner)
	for _, m := range a.Ports {
		if err := m.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		b.ports = append(b.ports, m.elements(node))
	}
	if a.Spoof != nil {
		if err := a.Spoof.validate(); err != nil {
			errs = append(errs, err)
		} else {
			port, allowed := a.Spoof.elements(node)
			b.l2 = append(b.l2, setElems{spoofPortsSet(), []nftables.SetElement{port}}, setElems{spoofAllowedSet(), []nftables.SetElement{allowed}})
		}
	}
	if a.Sources != nil {
		if err := a.Sources.validate(); err != nil {
			errs = append(errs, err)
		} else {
			b.l2 = append(b.l2, a.Sources.elements(node)...)
		}
	}
	if a.Bridge != "" {
		if len(a.Bridge) >= unix.IFNAMSIZ {
			return b, fmt.Errorf("bridge %q: %w", a.Bridge, ErrInvalid)
		}
		b.l2 = append(b.l2, setElems{bridgeSet(), []nftables.SetElement{{Key: ifnameKey(a.Bridge), Comment: "bridge"}}})
		b.marker = a.Bridge
	}
	return b, errors.Join(errs...)
}

func (b batch) empty() bool {
	return len(b.ups) == 0 && len(b.ports) == 0 && len(b.l2) == 0 && b.marker == "" && b.extra == nil
}

// queueAdds queues every element addition of the batch.
func (b batch) queueAdds(c *nftables.Conn) error {
	errs := []error{queueAdds(c, b.ups)}
	for _, p := range b.ports {
		errs = append(errs, c.SetAddElements(p.dnat, []nftables.SetElement{p.dnatElem}), c.SetAddElements(portFamilyOfSet(p.dnat).snatSet(), p.snat))
	}
	for _, s := range b.l2 {
		errs = append(errs, c.SetAddElements(s.set, s.elems))
	}
	if b.marker != "" {
		errs = append(errs, c.SetAddElements(markerSet(b.marker), []nftables.SetElement{{Key: ifnameKey(b.marker)}}))
	}
	if b.extra != nil {
		errs = append(errs, b.extra.QueueAdds(c))
	}
	return errors.Join(errs...)
}

func portFamilyOfSet(s *nftables.Set) portFamily {
	if strings.HasPrefix(s.Name, ports6.any) {
		return ports6
	}
	return ports4
}

// Outcome says what Add found besides doing its job.
type Outcome struct {
	// Rebuilt: the fast path failed and the slow path set the table's
	// objects up again. The caller should put back the other attachments'
	// elements too, in case a flush took them (see package restore).
	Rebuilt bool
	// BridgeMissing: the attachment's bridge has no marker, so its
	// node-side setup (host filters, isolation) is to be done, after which
	// SetupBridge sets the marker.
	BridgeMissing bool
}

// Add installs the attachment. The usual case is one batch of element
// additions, which commits without leaving the kernel anything to release
// (see the package notes on cost). When it fails because objects are
// missing (ENOENT: the node's first use, a flushed ruleset) or a key
// points elsewhere (EEXIST: a masquerade generation change, or a host
// port another container holds), the slow path reads what it must,
// reports a port conflict (wrapping ErrPortConflict; nothing was added),
// or sets everything up and adds again, in one transaction.
//
// A bridge without its marker — its first container, or the first since
// its last left — is looked up before the batch (one GETSET), not found by
// a failing batch, whose abort would wait a grace period: the batch then
// leaves the marker out, which only SetupBridge creates, and the outcome
// says so.
func Add(a Attachment, opts ...Option) (Outcome, error) {
	b, err := a.plan()
	if err != nil {
		return Outcome{}, fmt.Errorf("nat: add attachment %s: %w", a.Owner, err)
	}
	if b.empty() {
		return Outcome{}, nil
	}
	conn, err := dial(opts)
	if err != nil {
		return Outcome{}, fmt.Errorf("nat: add attachment %s: %w", a.Owner, err)
	}
	defer closeConn(conn, opts)
	var out Outcome
	err = unix.ENOENT // with ForceSetup: straight to the slow path
	if !configOf(opts).forceSetup {
		if out.BridgeMissing, err = b.lookUp(conn); err != nil {
			return out, fmt.Errorf("nat: add attachment %s: %w", a.Owner, err)
		}
		if out.BridgeMissing {
			b.marker = ""
		}
		err = b.fastAdd(conn, a.Bridge != "")
	}
	if IsNotFound(err) || isExist(err) {
		out.Rebuilt = true
		var missing bool
		missing, err = b.slowAdd(conn, a.GuardGroup)
		out.BridgeMissing = out.BridgeMissing || missing
	}
	if err != nil {
		return out, fmt.Errorf("nat: add attachment %s of network %s (tables inet and bridge %s): %w", a.Owner, a.Network.Name, TableName, err)
	}
	return out, nil
}

// lookUp is the fast path's reads before its batch: where the other
// package's elements lead (Extra.Resolve), and whether the bridge has no
// marker.
func (b batch) lookUp(conn *nftables.Conn) (markerMissing bool, err error) {
	if b.extra != nil {
		if err := b.extra.Resolve(conn); err != nil {
			return false, err
		}
	}
	return b.markerMissing(conn)
}

// markerMissing reports whether the batch's bridge has no marker set.
func (b batch) markerMissing(conn *nftables.Conn) (bool, error) {
	if b.marker == "" {
		return false, nil
	}
	_, err := conn.GetSetByName(pierTable(), markerName(b.marker))
	if IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get marker of bridge %s: %w", b.marker, err)
	}
	return false, nil
}

// fastAdd sends the batch of element additions. When the attachment is
// on a bridge, whose setup filled chain localnet, and the chain has lost
// its rules (the table was flushed, its sets kept: see lost.go), it
// reports ENOENT as a missing object would.
func (b batch) fastAdd(conn *nftables.Conn, onBridge bool) error {
	if err := flush(conn, b.queueAdds); err != nil || !onBridge {
		return err
	}
	lost, err := baseLost(conn)
	if err == nil && lost {
		err = fmt.Errorf("chain %s has no rules: %w", localnetChain, unix.ENOENT)
	}
	return err
}

// slowAdd: see Add. A concurrent change between its read and its write
// makes the batch fail as a whole, and it reads and tries again. It
// reports whether the bridge's marker is missing.
func (b batch) slowAdd(conn *nftables.Conn, group uint32) (bool, error) {
	var err error
	for range 3 {
		if err := b.portConflicts(conn); err != nil {
			return false, err
		}
		var present map[string]bool
		if present, err = presentKeys(conn, b.ups); err != nil {
			return false, err
		}
		missing, merr := b.markerMissing(conn)
		if merr != nil {
			return false, merr
		}
		adds := b
		if missing {
			adds.marker = ""
		}
		if b.extra != nil {
			if err := b.extra.Prepare(conn); err != nil {
				return false, err
			}
		}
		err = flush(conn, func(c *nftables.Conn) error {
			errs := []error{queueBaseSetup(c)}
			if b.masq != nil {
				errs = append(errs, queueSetup(c, *b.masq), queueDeletes(c, b.ups, present))
			}
			if len(b.ports) > 0 {
				errs = append(errs, queuePortsSetup(c))
			}
			if b.extra != nil {
				errs = append(errs, b.extra.QueueSetup(c))
			}
			errs = append(errs, queueL2Setup(c, group), adds.queueAdds(c))
			return errors.Join(errs...)
		})
		if !IsNotFound(err) && !isExist(err) {
			return missing, err
		}
	}
	return false, fmt.Errorf("elements keep changing under concurrent updates: %w", err)
}

// portConflicts reads the DNAT maps the batch adds to and reports every
// key that another mapping holds.
func (b batch) portConflicts(conn *nftables.Conn) error {
	if len(b.ports) == 0 {
		return nil
	}
	held := map[string][]nftables.SetElement{}
	var conflicts []string
	for _, p := range b.ports {
		els, ok := held[p.dnat.Name]
		if !ok {
			var err error
			if els, err = listSet(conn, p.dnat); err != nil {
				return err
			}
			held[p.dnat.Name] = els
		}
		for _, e := range els {
			if slices.Equal(e.Key, p.dnatElem.Key) && !slices.Equal(e.Val, p.dnatElem.Val) {
				mine := decodePort(p.dnat, p.dnatElem)
				theirs := decodePort(p.dnat, e)
				conflicts = append(conflicts, fmt.Sprintf("%s/%d%s is mapped to %s by %s",
					mine.Protocol, mine.HostPort, onHost(mine.HostIP), netip.AddrPortFrom(theirs.ContainerIP, theirs.ContainerPort), theirs.Owner))
			}
		}
	}
	if len(conflicts) > 0 {
		return fmt.Errorf("%w: %s", ErrPortConflict, strings.Join(conflicts, "; "))
	}
	return nil
}

func onHost(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return " on " + a.String()
}

// listSet reads a set's elements; a missing table or set has none.
func listSet(conn *nftables.Conn, s *nftables.Set) ([]nftables.SetElement, error) {
	if _, err := conn.GetSetByName(s.Table, s.Name); err != nil {
		if IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get set %s: %w", s.Name, err)
	}
	els, err := conn.GetSetElements(s)
	if err != nil {
		if _, again := conn.GetSetByName(s.Table, s.Name); IsNotFound(again) {
			return nil, nil
		}
		return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
	}
	return els, nil
}

// PortElement is one DNAT element of the host port maps.
type PortElement struct {
	PortMapping // Subnet is not stored in the DNAT maps and stays zero
	Owner       string
	ref         elemRef
}

// HairpinElement is one masqueraded client range of a mapped port.
type HairpinElement struct {
	ContainerIP   netip.Addr
	Protocol      string
	ContainerPort uint16
	First, Last   netip.Addr // the client source range
	Owner         string
	ref           elemRef
}

// SpoofElement is one element of the MAC check sets: a checked port
// (MAC nil) or a port's allowed MAC.
type SpoofElement struct {
	Port  string
	MAC   net.HardwareAddr
	Owner string
	ref   elemRef
}

type elemRef struct {
	set *nftables.Set
	el  nftables.SetElement
}

// NodeElements are the node-wide elements: host ports, MAC and source
// address checks.
type NodeElements struct {
	Ports   []PortElement
	Hairpin []HairpinElement
	Spoof   []SpoofElement
	Sources []SourceElement
}

// Owned returns the elements whose comment is owner (a NodeOwner value).
func (n NodeElements) Owned(owner string) NodeElements {
	return n.Filter(func(o string) bool { return o == owner })
}

// Filter returns the elements whose owner keep accepts.
func (n NodeElements) Filter(keep func(owner string) bool) NodeElements {
	var out NodeElements
	for _, e := range n.Ports {
		if keep(e.Owner) {
			out.Ports = append(out.Ports, e)
		}
	}
	for _, e := range n.Hairpin {
		if keep(e.Owner) {
			out.Hairpin = append(out.Hairpin, e)
		}
	}
	for _, e := range n.Spoof {
		if keep(e.Owner) {
			out.Spoof = append(out.Spoof, e)
		}
	}
	for _, e := range n.Sources {
		if keep(e.Owner) {
			out.Sources = append(out.Sources, e)
		}
	}
	return out
}

// Len is the number of elements.
func (n NodeElements) Len() int {
	return len(n.Ports) + len(n.Hairpin) + len(n.Spoof) + len(n.Sources)
}

func (n NodeElements) refs() []elemRef {
	var out []elemRef
	for _, e := range n.Ports {
		out = append(out, e.ref)
	}
	for _, e := range n.Hairpin {
		out = append(out, e.ref)
	}
	for _, e := range n.Spoof {
		out = append(out, e.ref)
	}
	for _, e := range n.Sources {
		out = append(out, e.ref)
	}
	return out
}

// ListNodeElements reads every node-wide element. Missing tables or sets
// hold none.
func ListNodeElements(opts ...Option) (NodeElements, error) {
	conn, err := dial(opts)
	if err != nil {
		return NodeElements{}, fmt.Errorf("nat: list host ports: %w", err)
	}
	defer closeConn(conn, opts)
	n, err := listNodeElements(conn)
	if err != nil {
		return NodeElements{}, fmt.Errorf("nat: list host ports and MAC checks: %w", err)
	}
	return n, nil
}

func listNodeElements(conn *nftables.Conn) (NodeElements, error) {
	var n NodeElements
	for _, pf := range []portFamily{ports4, ports6} {
		for _, m := range []*nftables.Set{pf.byIPMap(), pf.anyMap()} {
			els, err := listSet(conn, m)
			if err != nil {
				return n, err
			}
			for _, e := range els {
				n.Ports = append(n.Ports, decodePort(m, e))
			}
		}
		s := pf.snatSet()
		els, err := listSet(conn, s)
		if err != nil {
			return n, err
		}
		for _, e := range els {
			if h, ok := decodeHairpin(pf, s, e); ok {
				n.Hairpin = append(n.Hairpin, h)
			}
		}
	}
	for _, s := range []*nftables.Set{spoofPortsSet(), spoofAllowedSet()} {
		els, err := listSet(conn, s)
		if err != nil {
			return n, err
		}
		for _, e := range els {
			se := SpoofElement{Port: ifnameOf(e.Key), Owner: e.Comment, ref: elemRef{s, nftables.SetElement{Key: e.Key}}}
			if s.Name == spoofAllowed && len(e.Key) >= 22 {
				se.MAC = net.HardwareAddr(slices.Clone(e.Key[16:22]))
			}
			n.Spoof = append(n.Spoof, se)
		}
	}
	var err error
	n.Sources, err = listSources(conn)
	return n, err
}

// decodePort reads a DNAT element back. Malformed elements (not Pier's)
// decode to zero values and are still listed, so GC can see their owner.
func decodePort(m *nftables.Set, e nftables.SetElement) PortElement {
	pf := portFamilyOfSet(m)
	p := PortElement{Owner: e.Comment, ref: elemRef{m, nftables.SetElement{Key: e.Key}}}
	key := e.Key
	if m.Name == pf.byIP && len(key) >= int(pf.addrLen) {
		p.HostIP, _ = netip.AddrFromSlice(key[:pf.addrLen])
		key = key[pf.addrLen:]
	}
	if len(key) >= 8 {
		p.Protocol = protocolName(key[0])
		p.HostPort = uint16(key[4])<<8 | uint16(key[5])
	}
	if len(e.Val) >= int(pf.addrLen)+2 {
		p.ContainerIP, _ = netip.AddrFromSlice(e.Val[:pf.addrLen])
		p.ContainerPort = uint16(e.Val[pf.addrLen])<<8 | uint16(e.Val[pf.addrLen+1])
	}
	return p
}

func decodeHairpin(pf portFamily, s *nftables.Set, e nftables.SetElement) (HairpinElement, bool) {
	n := int(pf.addrLen)
	if len(e.Key) != 2*n+8 || len(e.KeyEnd) != len(e.Key) {
		return HairpinElement{Owner: e.Comment, ref: elemRef{s, nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd}}}, len(e.Key) > 0
	}
	h := HairpinElement{Protocol: protocolName(e.Key[n]), ContainerPort: uint16(e.Key[n+4])<<8 | uint16(e.Key[n+5]),
		Owner: e.Comment, ref: elemRef{s, nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd}}}
	h.ContainerIP, _ = netip.AddrFromSlice(e.Key[:n])
	h.First, _ = netip.AddrFromSlice(e.Key[n+8:])
	h.Last, _ = netip.AddrFromSlice(e.KeyEnd[n+8:])
	return h, true
}

// RemoveNodeElements deletes the given elements (as listed) in one batch.
// Elements already gone are no error: when the batch fails with ENOENT,
// it reads which are left and deletes those.
func RemoveNodeElements(n NodeElements, opts ...Option) error {
	if n.Len() == 0 {
		return nil
	}
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("nat: remove host ports: %w", err)
	}
	defer closeConn(conn, opts)
	if err := removeRefs(conn, n.refs()); err != nil {
		return fmt.Errorf("nat: remove host port, MAC and source check elements: %w", err)
	}
	return nil
}

// DelOwned deletes the node-wide elements whose comment is
// NodeOwner(network, owner): what DEL removes for port mappings and
// macspoofchk. It reads the sets first (the elements' keys depend on
// addresses and MACs DEL may no longer know).
func DelOwned(network, owner string, opts ...Option) error {
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("nat: delete host ports of %s: %w", owner, err)
	}
	defer closeConn(conn, opts)
	all, err := listNodeElements(conn)
	if err != nil {
		return fmt.Errorf("nat: delete host ports of %s: %w", owner, err)
	}
	if err := removeRefs(conn, all.Owned(NodeOwner(network, owner)).refs()); err != nil {
		return fmt.Errorf("nat: delete host ports and MAC check of %s: %w", owner, err)
	}
	return nil
}

func removeRefs(conn *nftables.Conn, refs []elemRef) error {
	for attempt := 0; len(refs) > 0; attempt++ {
		err := flush(conn, func(c *nftables.Conn) error {
			var errs []error
			for _, r := range refs {
				errs = append(errs, c.SetDeleteElements(r.set, []nftables.SetElement{r.el}))
			}
			return errors.Join(errs...)
		})
		if !IsNotFound(err) {
			return err
		}
		if attempt == 3 {
			return fmt.Errorf("elements keep changing under concurrent updates: %w", err)
		}
		if refs, err = stillPresent(conn, refs); err != nil {
			return err
		}
	}
	return nil
}

// stillPresent keeps the refs whose element still exists.
func stillPresent(conn *nftables.Conn, refs []elemRef) ([]elemRef, error) {
	have := map[string][]nftables.SetElement{}
	var out []elemRef
	for _, r := range refs {
		key := fmt.Sprint(r.set.Table.Family, "/", r.set.Name)
		els, ok := have[key]
		if !ok {
			var err error
			if els, err = listSet(conn, r.set); err != nil {
				return nil, err
			}
			have[key] = els
		}
		if slices.ContainsFunc(els, func(e nftables.SetElement) bool { return slices.Equal(e.Key, r.el.Key) }) {
			out = append(out, r)
		}
	}
	return out, nil
}
