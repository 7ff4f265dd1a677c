package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Element is one masqueraded address and the owner recorded with it.
type Element struct {
	Addr  netip.Addr
	Owner string // as stored: see StoredOwner
}

// Option changes where a call acts, or when it closes its socket. Without
// options every call acts in the network namespace of the calling OS
// thread, which the caller must have locked (runtime.LockOSThread) if it
// switched namespaces, and closes its socket before it returns.
type Option func(*config)

type config struct {
	netnsFd    int
	forceSetup bool
	later      *Closer
}

// ForceSetup makes Add take the slow path, which sets up every object
// the attachment needs, even when its elements could be added: a restore
// after the table lost its rules but kept its sets (see FindLostRules).
func ForceSetup() Option {
	return func(c *config) { c.forceSetup = true }
}

// Closer holds the sockets of calls made with CloseLater until the caller
// closes them. It is safe for concurrent calls.
type Closer struct {
	mu    sync.Mutex
	conns []*nftables.Conn
}

// CloseLater makes a call leave its socket to c instead of closing it.
// Closing a socket after a transaction that deleted something waits for
// the kernel to release the deleted objects, a grace period (see
// closeConn); a caller with a wait of its own to do meanwhile (DEL deleting
// a veth) closes them after it, when that release is usually done.
func CloseLater(c *Closer) Option {
	return func(cf *config) { cf.later = c }
}

// Keep leaves conn to c, to close with the others: for another package's
// nftables socket (network policy's elements) whose release DEL also
// waits for after the veth is gone.
func (c *Closer) Keep(conn *nftables.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conns = append(c.conns, conn)
}

// Close closes the sockets left to c.
func (c *Closer) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		_ = conn.CloseLasting() // every batch on it was acknowledged: nothing to lose
	}
	c.conns = nil
}

// InNetNS makes a call act in the network namespace that fd refers to (an
// open /run/netns/<name> or /proc/<pid>/ns/net). The netlink socket is
// opened in that namespace, so the caller's thread need not switch. The
// caller keeps ownership of fd; fd 0 means "the calling thread's namespace".
func InNetNS(fd int) Option {
	return func(c *config) { c.netnsFd = fd }
}

func configOf(opts []Option) config {
	var c config
	for _, o := range opts {
		o(&c)
	}
	return c
}

// dial opens one netlink socket that serves every batch of the call; see
// closeConn for why a call keeps to one socket.
func dial(opts []Option) (*nftables.Conn, error) {
	c := configOf(opts)
	nopts := []nftables.ConnOption{nftables.AsLasting()}
	if c.netnsFd != 0 {
		nopts = append(nopts, nftables.WithNetNSFd(c.netnsFd))
	}
	conn, err := nftables.New(nopts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return conn, nil
}

// closeConn closes the socket. Closing an nfnetlink socket makes the kernel
// wait for pending deferred releases of nftables objects in the namespace
// (one RCU grace period, about 10 ms here) when a transaction deleted or
// updated something, so a call closes its socket once, at its end — or
// leaves it to the caller's Closer (CloseLater).
func closeConn(conn *nftables.Conn, opts []Option) {
	if later := configOf(opts).later; later != nil {
		later.Keep(conn)
		return
	}
	// A close error on a netlink socket loses nothing: every batch was
	// acknowledged before.
	_ = conn.CloseLasting()
}

// flush sends what queue queues as one batch (one transaction).
func flush(conn *nftables.Conn, queue func(*nftables.Conn) error) error {
	if err := queue(conn); err != nil {
		return err
	}
	return conn.Flush()
}

// IsNotFound reports whether err says an nftables object (table, chain, map
// or element) does not exist.
func IsNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT)
}

// isExist reports EEXIST, which an element add returns when the address is
// already there pointing at another generation chain.
func isExist(err error) bool {
	return errors.Is(err, unix.EEXIST)
}

// AddMasq makes sure table inet pier holds n's maps and chains for its
// current subnets, and adds addrs to the map of their family with owner as
// comment. Running it again gives the same result; addresses outside
// n.Subnets are accepted and masqueraded too. With no addrs it only sets up
// the network.
//
// The usual case is one batch that only adds the elements. It leaves the
// kernel nothing to release, which keeps it fast (see the package notes on
// cost). When that batch fails because the maps or this generation's chain
// are missing (ENOENT) or an address points at another generation
// (EEXIST), slowAdd sets everything up.
func AddMasq(n Network, addrs []netip.Addr, owner string, opts ...Option) error {
	s, err := newSpec(n)
	if err == nil {
		err = validateOwner(owner)
	}
	a4, a6, aerr := splitAddrs(addrs)
	if err = errors.Join(err, aerr); err != nil {
		return fmt.Errorf("nat: add masquerade: %w", err)
	}
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("nat: add masquerade for network %q: %w", n.Name, err)
	}
	defer closeConn(conn, opts)
	ups := elementsByMap(s, a4, a6, StoredOwner(owner))
	if len(ups) > 0 {
		err = flush(conn, func(c *nftables.Conn) error { return queueAdds(c, ups) })
	}
	if len(ups) == 0 || IsNotFound(err) || isExist(err) {
		err = slowAdd(conn, s, ups)
	}
	if err != nil {
		return fmt.Errorf("nat: add masquerade for network %q (table inet %s, maps %s %s, chains %s %s): %w",
			n.Name, TableName, s.set4, s.set6, s.chain, s.gen, err)
	}
	return nil
}

// slowAdd sets the network up and makes each key point at the current
// generation with its comment, replacing what was there: it reads which
// keys exist, then deletes and re-adds those in the same transaction as
// the setup. A concurrent change between the read and the write makes the
// batch fail as a whole (ENOENT or EEXIST), and it is read and tried again.
func slowAdd(conn *nftables.Conn, s spec, ups []mapUpdate) error {
	var err error
	for range 3 {
		var present map[string]bool
		if present, err = presentKeys(conn, ups); err != nil {
			return err
		}
		err = flush(conn, func(c *nftables.Conn) error {
			return errors.Join(queueSetup(c, s), queueDeletes(c, ups, present), queueAdds(c, ups))
		})
		if !IsNotFound(err) && !isExist(err) {
			return err
		}
	}
	return fmt.Errorf("elements keep changing under concurrent updates: %w", err)
}

// mapUpdate is the keys of one call that go to one map.
type mapUpdate struct {
	m    *nftables.Set
	keys [][]byte
	els  []nftables.SetElement // keys pointing at the generation chain
}

// elementsByMap groups keys by map; families without keys are left out.
func elementsByMap(s spec, a4, a6 [][]byte, comment string) []mapUpdate {
	var out []mapUpdate
	for _, fk := range []struct {
		f    family
		keys [][]byte
	}{{ipv4, a4}, {ipv6, a6}} {
		if len(fk.keys) > 0 {
			out = append(out, mapUpdate{newMap(s.objects, fk.f), fk.keys, mapElements(fk.keys, s.gen, comment)})
		}
	}
	return out
}

func queueAdds(c *nftables.Conn, ups []mapUpdate) error {
	var errs []error
	for _, u := range ups {
		errs = append(errs, c.SetAddElements(u.m, u.els))
	}
	return errors.Join(errs...)
}

// queueDeletes deletes the keys of ups that are in present (all if present
// is nil).
func queueDeletes(c *nftables.Conn, ups []mapUpdate, present map[string]bool) error {
	var errs []error
	for _, u := range ups {
		var keys [][]byte
		for _, k := range u.keys {
			if present == nil || present[u.m.Name+"/"+string(k)] {
				keys = append(keys, k)
			}
		}
		if len(keys) > 0 {
			errs = append(errs, c.SetDeleteElements(u.m, keyElements(keys)))
		}
	}
	return errors.Join(errs...)
}

// presentKeys reads which of the keys of ups exist, as "<map>/<key>"; a
// missing map has none. It dumps the maps: only slow paths call it.
func presentKeys(conn *nftables.Conn, ups []mapUpdate) (map[string]bool, error) {
	present := map[string]bool{}
	for _, u := range ups {
		els, err := listMap(conn, u.m)
		if err != nil {
			return nil, err
		}
		for _, e := range els {
			present[u.m.Name+"/"+string(e.Addr.AsSlice())] = true
		}
	}
	return present, nil
}

// DelMasq removes addrs from n's maps. Addresses, maps or a table that are
// already gone are not errors, so DEL can run any number of times; the maps
// and chains stay, even when empty (see the package notes). It takes one
// batch when every address is present, or when n.Subnets are those AddMasq
// was given; otherwise a failed batch and a read of the maps come first.
func DelMasq(n Network, addrs []netip.Addr, opts ...Option) error {
	return Detach(Detachment{Network: n, Masq: addrs}, opts...)
}

// Detachment is what DEL removes by key: masquerade elements of Network's
// maps and a port's source check.
type Detachment struct {
	Network Network
	Masq    []netip.Addr
	Sources *SourceCheck // nil: none
}

// Detach removes d's elements in one transaction, as DelMasq and
// DelSources describe. One: every transaction that deletes leaves the
// kernel a deferred release that closing its socket waits for, and two
// sockets closing side by side often wait for two grace periods, one
// after the other.
func Detach(d Detachment, opts ...Option) error {
	var ups []mapUpdate
	if len(d.Masq) > 0 || d.Network.Name != "" {
		s, err := newSpec(d.Network)
		a4, a6, aerr := splitAddrs(d.Masq)
		if err = errors.Join(err, aerr); err != nil {
			return fmt.Errorf("nat: delete masquerade: %w", err)
		}
		ups = elementsByMap(s, a4, a6, "")
	}
	var src []setElems
	if d.Sources != nil {
		if err := d.Sources.validate(); err != nil {
			return fmt.Errorf("nat: delete source check: %w", err)
		}
		for _, se := range d.Sources.elements("") {
			src = append(src, setElems{se.set, keyOnly(se.elems)})
		}
	}
	if len(ups) == 0 && len(src) == 0 {
		return nil
	}
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("nat: delete elements of network %q: %w", d.Network.Name, err)
	}
	defer closeConn(conn, opts)
	if err := delMasq(conn, ups, len(d.Network.Subnets) > 0, src); err != nil {
		return fmt.Errorf("nat: delete elements of network %q (tables inet and bridge %s): %w", d.Network.Name, TableName, err)
	}
	return nil
}

// delMasq deletes the keys in one batch. With addFirst, the batch first
// adds each key at the generation of the caller's subnets (a no-op where it
// is there already), so that a key already gone is no error; without, it
// counts on all keys being there, as on a first DEL. Source check keys
// (src) are always added first. A batch that fails anyway (a key gone, a
// map, set or chain missing, a key at another generation) is followed by
// reading which keys exist and deleting those.
func delMasq(conn *nftables.Conn, ups []mapUpdate, addFirst bool, src []setElems) error {
	err := flush(conn, func(c *nftables.Conn) error {
		errs := []error{queueSourceDeletes(c, src, true)}
		if !addFirst {
			return errors.Join(append(errs, queueDeletes(c, ups, nil))...)
		}
		return errors.Join(append(errs, queueAdds(c, ups), queueDeletes(c, ups, nil))...)
	})
	for attempt := 1; IsNotFound(err) || isExist(err); attempt++ {
		if attempt > 3 {
			return fmt.Errorf("elements keep changing under concurrent updates: %w", err)
		}
		present, perr := presentKeys(conn, ups)
		if perr != nil {
			return perr
		}
		left, serr := presentSources(conn, src)
		if serr != nil {
			return serr
		}
		err = flush(conn, func(c *nftables.Conn) error {
			return errors.Join(queueSourceDeletes(c, left, false), queueDeletes(c, ups, present))
		})
	}
	return err
}

// splitAddrs validates addrs and returns their keys by family, without
// duplicates: deleting one key twice in a batch would fail with ENOENT.
// IPv4-mapped IPv6 addresses count as IPv4, as the kernel sees them so.
func splitAddrs(addrs []netip.Addr) (v4, v6 [][]byte, err error) {
	var a4, a6 []netip.Addr
	for _, a := range addrs {
		if !a.IsValid() || a.Zone() != "" {
			return nil, nil, fmt.Errorf("address %q: %w", a, ErrInvalid)
		}
		if a = a.Unmap(); a.Is4() {
			a4 = append(a4, a)
		} else {
			a6 = append(a6, a)
		}
	}
	return sortedKeys(a4), sortedKeys(a6), nil
}

// sortedKeys returns the addresses as map keys, sorted, without duplicates.
func sortedKeys(addrs []netip.Addr) [][]byte {
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	out := make([][]byte, len(addrs))
	for i, a := range addrs {
		out[i] = a.AsSlice()
	}
	return out
}
