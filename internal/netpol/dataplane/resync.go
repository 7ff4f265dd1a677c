package dataplane

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
)

// Resync makes table inet pier hold exactly s's network policy objects,
// whatever it holds now: after pierd starts, after someone flushed the
// table, after an Apply failed. It leaves other objects of the table
// (masquerade, host ports) alone, keeps the address maps' elements (the
// plugin's), and changes what differs without a window: sets are diffed
// element by element, chains are rewritten each in one transaction
// (policies before the pods that jump to them), and what is no longer
// wanted goes last. It returns the stale pod chains it could not delete
// yet (an element still leads to them); they drop until a later call.
func (dp *DataPlane) Resync(s State) ([]PodChain, error) {
	conn, err := dp.socket()
	if err != nil {
		return nil, err
	}
	left, err := resync(conn, s)
	return left, dp.done(err)
}

func resync(conn *nftables.Conn, s State) ([]PodChain, error) {
	have, err := readInstalled(conn)
	if err != nil {
		return nil, fmt.Errorf("network policy resync: read table inet %s: %w", TableName, err)
	}
	var ids setIDs
	steps := []step{baseStep(&ids)}
	wantSets := map[string]bool{}
	for _, set := range s.Sets {
		wantSets[set.Name] = true
		steps = append(steps, have.setSteps(&ids, set)...)
	}
	steps = append(steps, chainSteps(s.Policies, s.Pods)...)
	stalePods, stale := have.staleChains(s)
	for _, p := range stalePods {
		steps = append(steps, chainStep(p.Name(), p.rules()))
	}
	for _, name := range stale {
		steps = append(steps, removeChainStep(name))
	}
	for name, kind := range have.sets {
		if !wantSets[name] {
			steps = append(steps, removeSetStep(SetSpec{Name: name, Kind: kind}))
		}
	}
	if err := runSteps(conn, steps); err != nil {
		return nil, fmt.Errorf("network policy resync: write table inet %s: %w", TableName, err)
	}
	if err := repoint(conn, s.Pointers, true); err != nil {
		return nil, fmt.Errorf("network policy resync: pod addresses: %w", err)
	}
	if err := removeStalePointers(conn, s.Pointers); err != nil {
		return nil, fmt.Errorf("network policy resync: %w", err)
	}
	left, err := removePodChains(conn, stalePods)
	if err != nil {
		return left, fmt.Errorf("network policy resync: %w", err)
	}
	return left, nil
}

// RemovePods deletes pod chains no element leads to any more and returns
// those still in use.
func (dp *DataPlane) RemovePods(pods []PodChain) ([]PodChain, error) {
	conn, err := dp.socket()
	if err != nil {
		return pods, err
	}
	left, err := removePodChains(conn, pods)
	return left, dp.done(err)
}

// installed is what table inet pier holds of network policy objects.
type installed struct {
	chains map[string]bool
	sets   map[string]SetKind               // set pairs by base name
	elems  map[string][]nftables.SetElement // by family set name
}

func readInstalled(conn *nftables.Conn) (installed, error) {
	have := installed{chains: map[string]bool{}, sets: map[string]SetKind{}, elems: map[string][]nftables.SetElement{}}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return have, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == TableName && strings.HasPrefix(c.Name, prefix) {
			have.chains[c.Name] = true
		}
	}
	sets, err := conn.GetSets(table())
	if err != nil {
		// google/nftables formats the errno of a missing table with %v:
		// learn whether the table is there from the table list.
		if exists, terr := tableExists(conn); terr != nil || exists {
			return have, fmt.Errorf("list sets: %w", err)
		}
	}
	for _, set := range sets {
		base, kind, ok := setBase(set.Name)
		if !ok {
			continue
		}
		have.sets[base] = kind
		els, err := conn.GetSetElements(set)
		if err != nil {
			return have, fmt.Errorf("list elements of set %s: %w", set.Name, err)
		}
		have.elems[set.Name] = els
	}
	return have, nil
}

// setBase maps a family set's name to its pair's base name and kind.
func setBase(name string) (string, SetKind, bool) {
	base, ok := strings.CutSuffix(name, "-4")
	if !ok {
		base, ok = strings.CutSuffix(name, "-6")
	}
	switch {
	case !ok:
		return "", 0, false
	case strings.HasPrefix(base, selPrefix):
		return base, Addresses, true
	case strings.HasPrefix(base, portPrefix):
		return base, PortTuples, true
	}
	return "", 0, false
}

// setSteps makes one wanted set pair hold exactly its members.
func (have installed) setSteps(ids *setIDs, want SetMembers) []step {
	kind, ok := have.sets[want.Name]
	if !ok {
		return newSetSteps(ids, want)
	}
	if kind != want.Kind {
		// Cannot happen with Pier's names; refuse rather than corrupt.
		return []step{{msgs: 1, queue: func(*nftables.Conn) error {
			return fmt.Errorf("set %s exists with another type", want.Name)
		}}}
	}
	present := map[string]bool{}
	ch := ElementChange{Set: want.Name, Kind: want.Kind}
	for _, f := range families {
		for _, e := range have.elems[famSet(want.Name, f.v6)] {
			present[string(e.Key)] = true
		}
	}
	wanted := map[string]bool{}
	for _, m := range want.Members {
		k := string(want.element(m).Key)
		wanted[k] = true
		if !present[k] {
			ch.Add = append(ch.Add, m)
		}
	}
	for _, f := range families {
		for _, e := range have.elems[famSet(want.Name, f.v6)] {
			if m, ok := decodeMember(want.Kind, e, f.v6); ok && !wanted[string(e.Key)] {
				ch.Remove = append(ch.Remove, m)
			}
		}
	}
	return elementSteps(ch)
}

// staleChains returns the installed pod chains s does not want (to be
// made dropping, then removed) and the installed policy chains it does
// not want (to be removed).
func (have installed) staleChains(s State) ([]PodChain, []string) {
	want := map[string]bool{}
	for _, p := range s.Policies {
		want[p.Name()] = true
	}
	for _, p := range s.Pods {
		want[p.Name()] = true
	}
	var pods []PodChain
	var policies []string
	for name := range have.chains {
		if want[name] {
			continue
		}
		switch kindOf(name) {
		case kindPod:
			object, d, ok := parseChain(name)
			if !ok {
				continue
			}
			ns, n, _ := strings.Cut(object, "/")
			pods = append(pods, PodChain{Pod: Ref{ns, n}, Dir: d, Verdict: Gone, chain: name})
		case kindPolicy:
			policies = append(policies, name)
		}
	}
	return pods, policies
}

// removeStalePointers deletes the elements pierd added itself for
// addresses that are no local pod's any more.
func removeStalePointers(conn *nftables.Conn, ptrs []Pointer) error {
	keep := map[netip.Addr]bool{}
	for _, p := range ptrs {
		keep[p.Addr.Unmap()] = true
	}
	var steps []step
	for _, m := range maps() {
		els, err := readMap(conn, m)
		if err != nil {
			return err
		}
		for a, e := range els {
			if strings.HasPrefix(e.comment, pointerComment) && !keep[a] {
				steps = append(steps, step{weight: elemWeight, msgs: 1, queue: func(c *nftables.Conn) error {
					return c.SetDeleteElements(m, []nftables.SetElement{{Key: a.AsSlice()}})
				}})
			}
		}
	}
	return runSteps(conn, steps)
}

func tableExists(conn *nftables.Conn) (bool, error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}
