// Package explain answers "why is this flow allowed or dropped?" from the
// network policy state installed in the node's table inet pier. It reads
// the base chains, maps, chains and sets the data plane installed and runs
// the rules for a new connection with a small interpreter of the
// expressions Pier emits (payload, meta, cmp, range, bitwise, lookup,
// verdicts, ct state), so the answer is the kernel's verdict, not a
// recomputation from the policies; the rule comments name the policies.
//
// A node decides the egress of its own pods and the ingress of its own
// pods: a flow between two nodes is half decided on each, and Explain
// says which half it cannot see.
package explain

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// Flow is a new connection to explain.
type Flow struct {
	Src, Dst netip.Addr
	Proto    uint8
	Port     uint16
}

func (f Flow) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", f.Src, f.Dst, dataplane.ProtoName(f.Proto), f.Port)
}

// Step is one rule that decided something on the way: a jump, a map
// lookup, an accept or a drop.
type Step struct {
	Chain   string `json:"chain"`
	Rule    int    `json:"rule"` // position in the chain, from 0
	Comment string `json:"comment,omitempty"`
	Action  string `json:"action"`
}

// Check is one base chain's decision.
type Check struct {
	Chain   string `json:"chain"`
	Verdict string `json:"verdict"` // "accept" or "drop"
	Steps   []Step `json:"steps"`
}

// Report is the node's decision on a flow.
type Report struct {
	Flow Flow `json:"flow"`
	// Hook is "forward" (to a pod or beyond the node) or "input" (to one
	// of the node's own addresses).
	Hook    string  `json:"hook"`
	Checks  []Check `json:"checks"`
	Allowed bool    `json:"allowed"`
	// Notes say what this node cannot decide.
	Notes []string `json:"notes,omitempty"`
}

// Explain evaluates flow against the rules installed where opts say
// (the calling thread's namespace by default). toNode says the
// destination is one of the node's own addresses.
func Explain(flow Flow, toNode bool, opts ...dataplane.Option) (Report, error) {
	conn, err := dataplane.Dial(opts...)
	if err != nil {
		return Report{}, err
	}
	defer dataplane.CloseConn(conn)
	rs := &ruleset{conn: conn, chains: map[string][]*nftables.Rule{}, sets: map[string]map[string][]byte{}}
	rep := Report{Flow: flow, Hook: "forward", Allowed: true}
	chains := dataplane.ForwardChains()
	if toNode {
		rep.Hook, chains = "input", dataplane.InputChains()
	}
	for _, base := range chains {
		m := &machine{rs: rs, pkt: newPacket(flow)}
		v, err := m.run(base)
		if err != nil {
			return rep, fmt.Errorf("chain %s: %w", base, err)
		}
		verdict := "accept"
		if v.kind == expr.VerdictDrop {
			verdict, rep.Allowed = "drop", false
		}
		rep.Checks = append(rep.Checks, Check{Chain: base, Verdict: verdict, Steps: m.steps})
		if !rep.Allowed {
			break // the kernel stops at the first drop
		}
	}
	rep.Notes = notes(rep)
	return rep, nil
}

// notes say which half of a flow another node decides.
func notes(rep Report) []string {
	var out []string
	mapped := func(chain, m string) bool {
		for _, c := range rep.Checks {
			for _, s := range c.Steps {
				if c.Chain == chain && strings.Contains(s.Action, "@"+m) {
					return true
				}
			}
		}
		return false
	}
	egress, ingress := dataplane.ForwardChains()[0], dataplane.ForwardChains()[1]
	if rep.Hook == "input" {
		egress = dataplane.InputChains()[0]
	}
	if !mapped(egress, "np-egress") {
		out = append(out, fmt.Sprintf("%s is no pod of this node: its egress is decided on its own node, if it is a pod", rep.Flow.Src))
	}
	if rep.Hook == "forward" && !mapped(ingress, "np-ingress") && rep.Allowed {
		out = append(out, fmt.Sprintf("%s is no pod of this node: its ingress is decided on its own node, if it is a pod", rep.Flow.Dst))
	}
	return out
}

// ruleset reads chains and sets of table inet pier on demand.
type ruleset struct {
	conn   *nftables.Conn
	chains map[string][]*nftables.Rule
	sets   map[string]map[string][]byte // set → key → verdict data (nil for plain sets)
}

func (rs *ruleset) rules(chain string) ([]*nftables.Rule, error) {
	if r, ok := rs.chains[chain]; ok {
		return r, nil
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableName}
	r, err := rs.conn.GetRules(t, &nftables.Chain{Name: chain, Table: t})
	if err != nil {
		return nil, fmt.Errorf("read chain %s: %w", chain, err)
	}
	rs.chains[chain] = r
	return r, nil
}

func (rs *ruleset) set(name string) (map[string][]byte, error) {
	if s, ok := rs.sets[name]; ok {
		return s, nil
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableName}
	set, err := rs.conn.GetSetByName(t, name)
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", name, err)
	}
	els, err := rs.conn.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("read elements of set %s: %w", name, err)
	}
	out := make(map[string][]byte, len(els))
	for _, e := range els {
		out[string(e.Key)] = e.Val
	}
	rs.sets[name] = out
	return out, nil
}

func comment(r *nftables.Rule) string {
	c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return c
}

var errUnsupported = errors.New("expression Explain cannot evaluate")

// protoNumbers for parsing "80/udp".
var protoNumbers = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

// ParseProto turns "tcp", "udp" or "sctp" into its number.
func ParseProto(s string) (uint8, bool) {
	p, ok := protoNumbers[strings.ToLower(s)]
	return p, ok
}
