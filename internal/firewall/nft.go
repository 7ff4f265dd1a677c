package firewall

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// The nftables side: iptables-nft's tables and plain nftables chains.

const (
	dockerUserChain = "DOCKER-USER"
	pierChain       = "PIER-FORWARD"
	jumpComment     = "pier: forwarded traffic of Pier bridges"
	// firewalldTable is the table firewalld keeps; its chains are
	// firewalld's to rebuild, and it is reached over D-Bus instead.
	firewalldTable = "firewalld"
)

type nftBackend struct{}

// nftPlace is where, in nftables, the accepts of a bridge go.
type nftPlace struct {
	table    *nftables.Table
	chain    string // the chain the three rules go to
	iptables bool   // written the way iptables-nft writes rules
	jumpFrom string // with chain PIER-FORWARD: the chain jumping to it
}

// isIptablesForward reports whether c is iptables-nft's FORWARD chain.
func isIptablesForward(c *nftables.Chain) bool {
	fam := c.Table.Family
	return (fam == nftables.TableFamilyIPv4 || fam == nftables.TableFamilyIPv6) && c.Table.Name == "filter" && c.Name == "FORWARD"
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	default:
		return fmt.Sprintf("family%d", f)
	}
}

// closeConn closes a call's one netlink socket. Each call keeps to one
// (nftables.AsLasting) because closing an nfnetlink socket waits until the
// kernel has released what earlier transactions of the namespace deleted
// (a grace period), so a socket per request would wait once per request.
func closeConn(conn *nftables.Conn) {
	_ = conn.CloseLasting() // every batch on it was acknowledged: nothing to lose
}

func (nftBackend) scan(v *view, bridge string) ([]Place, error) {
	conn, chains := v.conn, v.chains
	var out []Place
	for _, c := range chains {
		if !isForwardFilter(c) || c.Table.Name == firewalldTable || c.Table.Name == "pier" {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s %s %s: %w", familyName(c.Table.Family), c.Table.Name, c.Name, err)
		}
		why := dropsWhy(c, rules)
		if why == "" {
			continue
		}
		p := nftPlace{table: c.Table, chain: c.Name}
		backendName := BackendNftables
		if isIptablesForward(c) {
			backendName, p.iptables = BackendIptablesNFT, true
			p.chain, p.jumpFrom = pierChain, c.Name
			if hasChain(chains, c.Table, dockerUserChain) {
				p.chain, p.jumpFrom = dockerUserChain, ""
			}
		}
		present, err := p.present(conn, bridge, c, rules)
		if err != nil {
			return nil, err
		}
		out = append(out, Place{Backend: backendName, Where: familyName(c.Table.Family) + " " + c.Table.Name + " " + p.chain, Why: why, Present: present, key: p})
	}
	return out, nil
}

func isForwardFilter(c *nftables.Chain) bool {
	return c.Hooknum != nil && *c.Hooknum == *nftables.ChainHookForward && c.Type == nftables.ChainTypeFilter &&
		c.Table.Family != nftables.TableFamilyBridge
}

func hasChain(chains []*nftables.Chain, t *nftables.Table, name string) bool {
	for _, c := range chains {
		if c.Name == name && c.Table.Name == t.Name && c.Table.Family == t.Family {
			return true
		}
	}
	return false
}

// dropsWhy says why the base chain drops forwarded traffic, or "" when it
// does not: a drop policy, or a last rule that drops or rejects whatever
// it sees (firewalld's style, and ufw's).
func dropsWhy(c *nftables.Chain, rules []*nftables.Rule) string {
	name := familyName(c.Table.Family) + " " + c.Table.Name + " " + c.Name
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
		return name + " has policy drop"
	}
	if len(rules) == 0 {
		return ""
	}
	last := rules[len(rules)-1]
	final := false
	for _, e := range last.Exprs {
		switch e := e.(type) {
		case *expr.Counter:
		case *expr.Reject:
			final = true
		case *expr.Verdict:
			final = e.Kind == expr.VerdictDrop
		default:
			return "" // a match: not unconditional
		}
	}
	if final {
		return name + " ends in an unconditional drop"
	}
	return ""
}

// ours returns the rules of the chain that carry the bridge's comment.
func ours(conn *nftables.Conn, t *nftables.Table, chain, comment string) ([]*nftables.Rule, error) {
	rules, err := conn.GetRules(t, &nftables.Chain{Name: chain, Table: t})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("list rules of %s %s %s: %w", familyName(t.Family), t.Name, chain, err)
	}
	return withComment(rules, comment), nil
}

func withComment(rules []*nftables.Rule, comment string) []*nftables.Rule {
	var out []*nftables.Rule
	for _, r := range rules {
		if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && c == comment {
			out = append(out, r)
		}
	}
	return out
}

// present reports whether the three accepts (and the jump to PIER-FORWARD)
// are there. chain is the rules of the chain that drops, which scan has
// read: when the accepts go into that chain, they are not read again.
func (p nftPlace) present(conn *nftables.Conn, bridge string, chain *nftables.Chain, chainRules []*nftables.Rule) (bool, error) {
	var rules []*nftables.Rule
	var err error
	if p.chain == chain.Name {
		rules = withComment(chainRules, Comment(bridge))
	} else if rules, err = ours(conn, p.table, p.chain, Comment(bridge)); err != nil {
		return false, err
	}
	kinds := map[string]bool{}
	for _, r := range rules {
		kinds[ruleKind(r)] = true
	}
	if !kinds["in"] || !kinds["replies"] || !kinds["dnat"] {
		return false, nil
	}
	if p.jumpFrom == "" {
		return true, nil
	}
	jumps, err := ours(conn, p.table, p.jumpFrom, jumpComment)
	return len(jumps) > 0, err
}

// ruleKind tells which of the three accepts a rule of ours is.
func ruleKind(r *nftables.Rule) string {
	kind := ""
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.Key == expr.MetaKeyIIFNAME {
				kind = "in"
			}
		case *expr.Ct:
			if e.Key == expr.CtKeySTATE {
				kind = "replies"
			} else if e.Key == expr.CtKeySTATUS {
				kind = "dnat"
			}
		case *expr.Match:
			if info, ok := e.Info.(*xt.ConntrackMtinfo3); ok {
				if info.StateMask&xtStateDNAT != 0 {
					kind = "dnat"
				} else {
					kind = "replies"
				}
			}
		}
	}
	return kind
}

func (nftBackend) add(v *view, bridge string, pl Place) error {
	p, ok := pl.key.(nftPlace)
	if !ok {
		return fmt.Errorf("place %s is not an nftables place", pl)
	}
	conn := v.conn
	stale, err := ours(conn, p.table, p.chain, Comment(bridge))
	if err != nil {
		return err
	}
	var jumps []*nftables.Rule
	if p.jumpFrom != "" {
		if jumps, err = ours(conn, p.table, p.jumpFrom, jumpComment); err != nil {
			return err
		}
	}
	ch := &nftables.Chain{Name: p.chain, Table: p.table}
	for _, r := range stale {
		if err := conn.DelRule(r); err != nil {
			return err
		}
	}
	if p.jumpFrom != "" {
		conn.AddChain(ch) // a regular chain; no-op when present
		if len(jumps) == 0 {
			from := &nftables.Chain{Name: p.jumpFrom, Table: p.table}
			conn.InsertRule(&nftables.Rule{Table: p.table, Chain: from, Exprs: []expr.Any{
				&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictJump, Chain: p.chain},
			}, UserData: userdata.AppendString(nil, userdata.TypeComment, jumpComment)})
		}
	}
	rules := acceptRules(bridge, p.iptables)
	for i := len(rules) - 1; i >= 0; i-- { // each insert goes to the top
		conn.InsertRule(&nftables.Rule{Table: p.table, Chain: ch, Exprs: rules[i],
			UserData: userdata.AppendString(nil, userdata.TypeComment, Comment(bridge))})
	}
	return conn.Flush()
}

func (nftBackend) remove(v *view, bridge string) error {
	conn, chains := v.conn, v.chains
	var errs []error
	for _, c := range chains {
		if c.Table.Name == firewalldTable || c.Table.Name == "pier" {
			continue
		}
		if !isForwardFilter(c) && c.Name != dockerUserChain && c.Name != pierChain {
			continue
		}
		rules, err := ours(conn, c.Table, c.Name, Comment(bridge))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range rules {
			errs = append(errs, conn.DelRule(r))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete rules: %w", err)
	}
	return removeEmptyPierChains(conn, chains)
}

// removeEmptyPierChains deletes PIER-FORWARD, and the jump to it, from a
// table where no bridge has rules in it any more.
func removeEmptyPierChains(conn *nftables.Conn, chains []*nftables.Chain) error {
	for _, c := range chains {
		if c.Name != pierChain {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil || len(rules) > 0 {
			continue // gone meanwhile, or still used
		}
		jumps, err := ours(conn, c.Table, "FORWARD", jumpComment)
		if err != nil {
			return err
		}
		for _, r := range jumps {
			if err := conn.DelRule(r); err != nil {
				return err
			}
		}
		conn.DelChain(c)
		if err := conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("delete chain %s %s %s: %w", familyName(c.Table.Family), c.Table.Name, pierChain, err)
		}
	}
	return nil
}

// xtables conntrack state bits (XT_CONNTRACK_STATE_BIT and the pseudo
// state DNAT).
const (
	xtStateEstablished = 1 << 1
	xtStateRelated     = 1 << 2
	xtStateDNAT        = 1 << 7
)

// acceptRules are the three accepts. In iptables form the conntrack tests
// are the xtables conntrack match, which iptables-nft reads back as
// "-m conntrack --ctstate …"; natively they are ct expressions.
func acceptRules(bridge string, iptables bool) [][]expr.Any {
	name := append([]byte(bridge), 0) // an exact name, as iptables and nft compare it
	dev := func(key expr.MetaKey) []expr.Any {
		return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name}}
	}
	accept := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
	ct := func(key expr.CtKey, bits uint32, xtBits uint16) []expr.Any {
		if iptables {
			return []expr.Any{&expr.Match{Name: "conntrack", Rev: 3, Info: &xt.ConntrackMtinfo3{
				ConntrackMtinfo2: xt.ConntrackMtinfo2{
					ConntrackMtinfoBase: xt.ConntrackMtinfoBase{MatchFlags: uint16(xt.ConntrackState)},
					StateMask:           xtBits,
				},
			}}}
		}
		zero := make([]byte, 4)
		return []expr.Any{
			&expr.Ct{Key: key, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: zero},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero},
		}
	}
	cat := func(parts ...[]expr.Any) []expr.Any { return concatExprs(parts) }
	return [][]expr.Any{
		cat(dev(expr.MetaKeyIIFNAME), accept),
		cat(dev(expr.MetaKeyOIFNAME), ct(expr.CtKeySTATE, 1<<1|1<<2, xtStateEstablished|xtStateRelated), accept),
		cat(dev(expr.MetaKeyOIFNAME), ct(expr.CtKeySTATUS, 1<<5, xtStateDNAT), accept),
	}
}

func concatExprs(parts [][]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
