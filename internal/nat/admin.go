package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// This file holds the calls for CHECK, GC and tooling. Unlike AddMasq and
// DelMasq they read the ruleset before writing.

// ListMasq returns the elements of the network's maps, IPv4 first, each
// family sorted by address. A missing table or map gives no elements and no
// error.
func ListMasq(networkName string, opts ...Option) ([]Element, error) {
	if err := validateName(networkName); err != nil {
		return nil, fmt.Errorf("nat: list masquerade: %w", err)
	}
	conn, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("nat: list masquerade for network %q: %w", networkName, err)
	}
	defer closeConn(conn, opts)
	o := objectNames(networkName)
	var out []Element
	for _, f := range families {
		els, err := listMap(conn, newMap(o, f))
		if err != nil {
			return nil, fmt.Errorf("nat: list masquerade for network %q: %w", networkName, err)
		}
		out = append(out, els...)
	}
	return out, nil
}

// listMap reads one map's elements. GetSetElements in google/nftables
// v0.3.0 formats the kernel's errno with %v, so ENOENT is learnt from
// GetSetByName (which wraps it) before and, on error, again after.
func listMap(conn *nftables.Conn, m *nftables.Set) ([]Element, error) {
	if _, err := conn.GetSetByName(m.Table, m.Name); err != nil {
		if IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get map inet %s %s: %w", TableName, m.Name, err)
	}
	raw, err := conn.GetSetElements(m)
	if err != nil {
		if _, again := conn.GetSetByName(m.Table, m.Name); IsNotFound(again) {
			return nil, nil // removed between the two calls
		}
		return nil, fmt.Errorf("list elements of map inet %s %s: %w", TableName, m.Name, err)
	}
	out := make([]Element, 0, len(raw))
	for _, e := range raw {
		addr, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			return nil, fmt.Errorf("map inet %s %s: element key of %d bytes is no address", TableName, m.Name, len(e.Key))
		}
		out = append(out, Element{Addr: addr, Owner: e.Comment})
	}
	slices.SortFunc(out, func(a, b Element) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// RemoveNetwork deletes the network's base chain, maps and generation
// chains, whatever they contain; missing objects are fine. The table stays,
// as it may hold other networks. It is meant for tooling and GC, not DEL.
func RemoveNetwork(networkName string, opts ...Option) error {
	if err := validateName(networkName); err != nil {
		return fmt.Errorf("nat: remove network: %w", err)
	}
	conn, err := dial(opts)
	if err != nil {
		return fmt.Errorf("nat: remove network %q: %w", networkName, err)
	}
	defer closeConn(conn, opts)
	o := objectNames(networkName)
	gens, err := genChains(conn, o)
	if err != nil {
		return fmt.Errorf("nat: remove network %q: %w", networkName, err)
	}
	// Order matters within the batch: the base chain's rules reference the
	// maps, whose elements reference the generation chains.
	parts := []func(*nftables.Conn){deleteChain(newBaseChain(o))}
	for _, f := range families {
		m := newMap(o, f)
		parts = append(parts, func(c *nftables.Conn) { c.DelSet(m) })
	}
	for _, g := range gens {
		parts = append(parts, deleteChain(newRegularChain(g)))
	}
	if err := flushTolerant(conn, parts); err != nil {
		return fmt.Errorf("nat: remove network %q (table inet %s): %w", networkName, TableName, err)
	}
	return nil
}

// PruneGenerations deletes the generation chains of n, other than the one
// for n's current subnets, that no element points at any more. The kernel
// refuses (EBUSY) to delete a chain still referenced, which makes this safe
// against concurrent AddMasq calls. It returns the chains removed.
func PruneGenerations(n Network, opts ...Option) ([]string, error) {
	s, err := newSpec(n)
	if err != nil {
		return nil, fmt.Errorf("nat: prune: %w", err)
	}
	conn, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("nat: prune network %q: %w", n.Name, err)
	}
	defer closeConn(conn, opts)
	gens, err := genChains(conn, s.objects)
	if err != nil {
		return nil, fmt.Errorf("nat: prune network %q: %w", n.Name, err)
	}
	var removed []string
	for _, g := range gens {
		if g == s.gen {
			continue
		}
		err := flush(conn, func(c *nftables.Conn) error { deleteChain(newRegularChain(g))(c); return nil })
		switch {
		case err == nil:
			removed = append(removed, g)
		case errors.Is(err, unix.EBUSY), IsNotFound(err):
			// Still in use, or pruned concurrently.
		default:
			return removed, fmt.Errorf("nat: prune network %q: delete chain %s: %w", n.Name, g, err)
		}
	}
	return removed, nil
}

// genChains lists the generation chains of o.
func genChains(conn *nftables.Conn, o objects) ([]string, error) {
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains of family inet: %w", err)
	}
	var out []string
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == TableName && o.isGenChain(c.Name) {
			out = append(out, c.Name)
		}
	}
	return out, nil
}

// deleteChain queues the removal of a chain with its rules. The explicit
// flush makes the deletion independent of the kernel version's rules on
// deleting non-empty chains.
func deleteChain(ch *nftables.Chain) func(*nftables.Conn) {
	return func(c *nftables.Conn) {
		c.FlushChain(ch)
		c.DelChain(ch)
	}
}

// flushTolerant sends all parts in one batch. A batch is all or nothing, so
// when it fails with ENOENT (some object missing) each part is sent again
// alone, in order, and a part failing with ENOENT counts as done: deleting
// what is already gone succeeds.
func flushTolerant(conn *nftables.Conn, parts []func(*nftables.Conn)) error {
	all := func(c *nftables.Conn) error {
		for _, p := range parts {
			p(c)
		}
		return nil
	}
	if err := flush(conn, all); !IsNotFound(err) {
		return err
	}
	for _, p := range parts {
		err := flush(conn, func(c *nftables.Conn) error { p(c); return nil })
		if err != nil && !IsNotFound(err) {
			return err
		}
	}
	return nil
}
