// Package firewall makes the node's own packet filters accept what a Pier
// bridge forwards, on hosts whose filters drop forwarded traffic: Docker's
// (iptables FORWARD policy DROP), a plain nftables ruleset with a forward
// chain of policy drop, firewalld.
//
// # Why Pier's own table is not enough
//
// In netfilter a packet must be accepted by every base chain of its hook:
// an accept in table inet pier ends that table's verdict, not the packet's
// journey, and a drop in any other table still drops it. So for each
// filter that drops forwarded traffic, Pier puts accepts for its bridge
// into that filter itself:
//
//	iifname <bridge> accept                                   containers' traffic out, masqueraded or not, and
//	                                                          between containers (br_netfilter sends bridged
//	                                                          frames through the forward hook with the bridge
//	                                                          as both devices)
//	oifname <bridge> ct state established,related accept      replies
//	oifname <bridge> ct status dnat accept                    host ports (DNATed into the bridge)
//
// New connections from elsewhere into the bridge are left to the host's
// policy, as with the reference firewall plugin. Where they go:
//
//   - iptables with the nf_tables backend (iptables-nft; Docker's default on
//     current distributions): its tables are nftables tables (ip filter,
//     ip6 filter), written here over netlink in the form iptables-nft
//     writes itself (a conntrack match, a comment), so `iptables -S`, and
//     Docker's own iptables calls, still read them. Into Docker's
//     DOCKER-USER chain where it exists — Docker jumps there first from
//     FORWARD and documents it as the place for users' rules — else into a
//     chain PIER-FORWARD jumped to from the top of FORWARD.
//   - iptables-legacy: the kernel's x_tables have no netlink API (the only
//     interface replaces a whole table at once), so the iptables-legacy and
//     ip6tables-legacy binaries are run, as the reference plugin does
//     through go-iptables. Only when /proc/net/ip_tables_names shows a
//     legacy filter table in the namespace, which costs no process.
//   - any other nftables base chain of the forward hook that drops (policy
//     drop, or an unconditional drop or reject at its end): the three
//     rules at its top, natively.
//   - firewalld (its table "firewalld" is in the namespace): over its D-Bus
//     API, the bridge joins Pier's zone "pier", whose policy "pier-forward"
//     accepts what it forwards, and nothing it sends to the node (runtime
//     configuration, which a reload forgets: see package nodestate; see
//     firewalld.go). A bridge an operator put in a zone of theirs is left
//     there. firewalld's own chains are never written to: it rebuilds them
//     at will.
//
// Each rule carries the comment "pier: forward of bridge <bridge>", by
// which it is found again (Verify, Remove) whatever the chain.
//
// # Cost
//
// Nothing here runs on an ADD's fast path: a bridge's marker (package nat)
// says its setup is done, and only its first container, the first after
// its last left, or a flushed ruleset call Ensure. That is every container
// that finds its bridge empty, so on a node whose filters drop nothing
// Ensure costs one netlink socket, one dump of every table's chains (which
// also tells whether firewalld's table is here) and two /proc reads (no
// legacy x_tables table: no process run); where filters drop, the rules of
// the chains that drop are read too, legacy iptables costs a few process
// runs, firewalld a D-Bus connection. Nothing of what it finds is kept
// between calls: a firewall reload or a new filter would make it stale.
package firewall

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// Backend names, as Place.Backend shows them.
const (
	BackendIptablesNFT    = "iptables-nft"
	BackendIptablesLegacy = "iptables-legacy"
	BackendNftables       = "nftables"
	BackendFirewalld      = "firewalld"
)

// Place is one filter that drops forwarded traffic, and where in it the
// bridge's accepts go.
type Place struct {
	Backend string
	// Where names the chain (or zone) the accepts go to, as a person
	// would type it: "ip filter DOCKER-USER", "inet filter forward",
	// "zone trusted".
	Where string
	// Why says what drops: "FORWARD policy drop".
	Why string
	// Present reports whether the bridge's accepts are all there, or
	// that Pier leaves the place alone.
	Present bool
	// LeftAlone: the bridge is in a place someone else chose for it (a
	// firewalld zone of an operator's), which Pier neither changes nor
	// adds to; Why says what it means.
	LeftAlone bool
	// key identifies the place for its backend.
	key any
}

func (p Place) String() string {
	return fmt.Sprintf("%s %s (%s)", p.Backend, p.Where, p.Why)
}

// backend is one kind of host filter.
type backend interface {
	// scan lists the places of this kind that drop forwarded traffic and
	// whether the bridge's accepts are in each.
	scan(v *view, bridge string) ([]Place, error)
	// add puts the bridge's accepts into p, replacing any partial set.
	add(v *view, bridge string, p Place) error
	// remove deletes the bridge's accepts wherever they are.
	remove(v *view, bridge string) error
}

// view is the node's nftables ruleset as one call of Host sees it: one
// netlink socket and one dump of every chain, which every backend reads
// instead of opening and listing its own (firewalld's presence is its
// table's chains). Closing a socket is cheap unless a transaction on it
// deleted something (see closeConn), so a call that only reads (a bridge's
// first container, where no filter drops) costs one socket and one dump.
type view struct {
	conn   *nftables.Conn
	chains []*nftables.Chain
}

func openView() (*view, error) {
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	chains, err := conn.ListChains()
	if err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	return &view{conn: conn, chains: chains}, nil
}

func (v *view) close() { closeConn(v.conn) }

// hasTable reports whether a table of that name has chains.
func (v *view) hasTable(name string) bool {
	return slices.ContainsFunc(v.chains, func(c *nftables.Chain) bool { return c.Table.Name == name })
}

// Host is the node's filters, seen from the calling thread's network
// namespace.
type Host struct {
	backends []backend
}

// New returns the node's filters: every backend is asked, and those the
// node lacks answer with no places.
func New() *Host {
	return &Host{backends: []backend{nftBackend{}, legacyBackend{}, firewalldBackend{}}}
}

// Comment is what marks the bridge's rules.
func Comment(bridge string) string { return "pier: forward of bridge " + bridge }

// Scan lists the places that drop forwarded traffic, with whether the
// bridge's accepts are there.
func (h *Host) Scan(bridge string) ([]Place, error) {
	v, err := openView()
	if err != nil {
		return nil, fmt.Errorf("firewall: read the host's filters: %w", err)
	}
	defer v.close()
	var out []Place
	var errs []error
	for _, b := range h.backends {
		ps, err := b.scan(v, bridge)
		out = append(out, ps...)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("firewall: read the host's filters: %w", err)
	}
	return out, nil
}

// Ensure puts the bridge's accepts into every place that drops forwarded
// traffic and lacks them, and returns the places.
func (h *Host) Ensure(bridge string) ([]Place, error) {
	if err := validBridge(bridge); err != nil {
		return nil, err
	}
	v, err := openView()
	if err != nil {
		return nil, fmt.Errorf("firewall: read the host's filters: %w", err)
	}
	defer v.close()
	var out []Place
	for _, b := range h.backends {
		ps, err := b.scan(v, bridge)
		if err != nil {
			return out, fmt.Errorf("firewall: read the host's filters: %w", err)
		}
		for _, p := range ps {
			if !p.Present {
				if err := b.add(v, bridge, p); err != nil {
					return out, fmt.Errorf("firewall: accept bridge %s's traffic in %s: %w", bridge, p, err)
				}
				p.Present = true
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// Remove deletes the bridge's accepts from every filter; what is gone
// already is no error.
func (h *Host) Remove(bridge string) error {
	if err := validBridge(bridge); err != nil {
		return err
	}
	v, err := openView()
	if err != nil {
		return fmt.Errorf("firewall: remove bridge %s's accepts: %w", bridge, err)
	}
	defer v.close()
	var errs []error
	for _, b := range h.backends {
		errs = append(errs, b.remove(v, bridge))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("firewall: remove bridge %s's accepts: %w", bridge, err)
	}
	return nil
}

// Missing returns the places that drop forwarded traffic and lack the
// bridge's accepts.
func Missing(places []Place) []Place {
	var out []Place
	for _, p := range places {
		if !p.Present {
			out = append(out, p)
		}
	}
	return out
}

// Summary describes places in one line, for the bridge marker's comment
// and logs: "accepted in iptables-nft ip filter DOCKER-USER; …", or that
// no filter drops.
func Summary(places []Place) string {
	if len(places) == 0 {
		return "no host filter drops forwarded traffic"
	}
	var parts, alone []string
	for _, p := range places {
		if p.LeftAlone {
			alone = append(alone, p.Backend+" "+p.Where)
		} else {
			parts = append(parts, p.Backend+" "+p.Where)
		}
	}
	out := ""
	if len(parts) > 0 {
		out = "accepted in " + strings.Join(parts, "; ")
	}
	if len(alone) > 0 {
		if out != "" {
			out += "; "
		}
		out += "left alone in " + strings.Join(alone, "; ") + " (someone else's choice)"
	}
	return out
}

func validBridge(bridge string) error {
	if bridge == "" || len(bridge) > 15 || strings.ContainsAny(bridge, "\x00\"'\\ \t\n/:") {
		return fmt.Errorf("firewall: bridge name %q cannot be used in rules", bridge)
	}
	return nil
}
