package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// This file reads the installed state back for people (pierctl): which
// local pod each address belongs to and which policies isolate it.

// DirView is a local pod's state in one direction, as installed.
type DirView struct {
	Chain string `json:"chain"`
	// State is "open" (no policy selects the pod), "isolated" (Policies
	// select it; what they allow passes, the rest is dropped),
	// "unclassified" (pierd has not made the pod's chains: everything is
	// dropped), "gone" (the pod was deleted: everything is dropped) or
	// "missing" (the chain an element names does not exist).
	State    string   `json:"state"`
	Policies []string `json:"policies,omitempty"`
}

// PodView is one local pod (or unclassified attachment) with its
// addresses.
type PodView struct {
	Pod     string       `json:"pod,omitempty"` // "namespace/name", empty when unclassified
	Addrs   []netip.Addr `json:"addresses"`
	Owner   string       `json:"owner"` // the elements' comment: the attachment
	Ingress DirView      `json:"ingress"`
	Egress  DirView      `json:"egress"`
}

// LocalPods reads the address maps and the chains they lead to. Missing
// maps hold none.
func LocalPods(opts ...Option) ([]PodView, error) {
	conn, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("network policy: %w", err)
	}
	defer closeConn(conn)
	byKey := map[string]*PodView{}
	var order []string
	views := map[string]DirView{}
	for _, m := range maps() {
		els, err := readMap(conn, m)
		if err != nil {
			return nil, fmt.Errorf("network policy: read map %s: %w", m.Name, err)
		}
		for _, e := range els {
			key := e.comment + "|" + podOfChain(e.chain)
			pv, ok := byKey[key]
			if !ok {
				pv = &PodView{Pod: podOfChain(e.chain), Owner: e.comment}
				byKey[key] = pv
				order = append(order, key)
			}
			if !slices.Contains(pv.Addrs, e.addr) {
				pv.Addrs = append(pv.Addrs, e.addr)
			}
			v, ok := views[e.chain]
			if !ok {
				v = describeChain(conn, e.chain)
				views[e.chain] = v
			}
			if m.Name == mapEgress4 || m.Name == mapEgress6 {
				pv.Egress = v
			} else {
				pv.Ingress = v
			}
		}
	}
	out := make([]PodView, 0, len(order))
	for _, k := range order {
		slices.SortFunc(byKey[k].Addrs, netip.Addr.Compare)
		out = append(out, *byKey[k])
	}
	slices.SortFunc(out, func(a, b PodView) int { return strings.Compare(a.Pod+a.Owner, b.Pod+b.Owner) })
	return out, nil
}

// podOfChain is the pod a pod chain is named after; hashed names come
// back as they are.
func podOfChain(chain string) string {
	if kindOf(chain) != kindPod {
		return ""
	}
	object, _, ok := parseChain(chain)
	if !ok {
		return ""
	}
	return object
}

// describeChain reads a pod chain: its jumps are the policies, its last
// verdict whether it is open, isolated or gone.
func describeChain(conn *nftables.Conn, chain string) DirView {
	v := DirView{Chain: chain}
	if chain == ChainUnclassified {
		v.State = "unclassified"
		return v
	}
	rules, err := conn.GetRules(table(), regularChain(chain))
	if err != nil || len(rules) == 0 {
		v.State = "missing"
		return v
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			verdict, ok := e.(*expr.Verdict)
			if !ok {
				continue
			}
			switch verdict.Kind {
			case expr.VerdictJump:
				v.Policies = append(v.Policies, policyOfChain(verdict.Chain))
			case expr.VerdictAccept:
				v.State = "open"
			case expr.VerdictDrop:
				c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				v.State = "isolated"
				if strings.HasSuffix(c, " is gone") {
					v.State = "gone"
				}
			}
		}
	}
	return v
}

func policyOfChain(chain string) string {
	if object, _, ok := parseChain(chain); ok && kindOf(chain) == kindPolicy {
		return object
	}
	return chain
}

// PodAddrs finds the addresses of a pod ("namespace/name") in the
// installed state: a local pod's from the maps, any pod's that some
// selector set lists from the sets' element comments.
func PodAddrs(pod string, opts ...Option) ([]netip.Addr, error) {
	local, err := LocalPods(opts...)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, p := range local {
		if p.Pod == pod {
			out = append(out, p.Addrs...)
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	conn, err := dial(opts)
	if err != nil {
		return nil, fmt.Errorf("network policy: %w", err)
	}
	defer closeConn(conn)
	sets, err := conn.GetSets(table())
	if err != nil {
		return nil, nil // no table: no pod known
	}
	for _, s := range sets {
		if _, kind, ok := setBase(s.Name); !ok || kind != Addresses {
			continue
		}
		els, err := conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("network policy: read set %s: %w", s.Name, err)
		}
		for _, e := range els {
			if a, ok := netip.AddrFromSlice(e.Key); ok && e.Comment == pod && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out, nil
}
