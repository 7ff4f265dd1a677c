package netpol

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// memDP is a data plane in memory, as strict as the kernel about what an
// Apply may do: it refuses to create a set that exists, to remove an
// element, chain or set that does not exist, to jump to a missing chain,
// and to remove a chain or set something still refers to. Comparing one
// kept up to date by deltas with one built by a resync from the engine's
// state checks the deltas.
type memDP struct {
	sets     map[string]map[string]dataplane.Member
	kinds    map[string]dataplane.SetKind
	policies map[string]dataplane.PolicyChain
	pods     map[string]dataplane.PodChain
	pointers map[netip.Addr]dataplane.Ref
	removed  []string        // pod chains removed
	removals [][]string      // the chains of each RemovePods call
	busy     map[string]bool // pod chains an element still leads to
	applies  int
	resyncs  int
	fail     error // the next Apply fails with it
}

func newMemDP() *memDP {
	return &memDP{sets: map[string]map[string]dataplane.Member{}, kinds: map[string]dataplane.SetKind{},
		policies: map[string]dataplane.PolicyChain{}, pods: map[string]dataplane.PodChain{}, pointers: map[netip.Addr]dataplane.Ref{}}
}

func memberKey(m dataplane.Member) string { return fmt.Sprintf("%s/%d/%d", m.Addr, m.Proto, m.Port) }

func (d *memDP) Apply(delta dataplane.Delta) error {
	d.applies++
	if d.fail != nil {
		err := d.fail
		d.fail = nil
		return err
	}
	for _, s := range delta.NewSets {
		if _, ok := d.sets[s.Name]; ok {
			return fmt.Errorf("set %s exists", s.Name)
		}
		d.sets[s.Name], d.kinds[s.Name] = map[string]dataplane.Member{}, s.Kind
		for _, m := range s.Members {
			d.sets[s.Name][memberKey(m)] = m
		}
	}
	for _, ch := range delta.Elements {
		set, ok := d.sets[ch.Set]
		if !ok {
			return fmt.Errorf("elements of missing set %s", ch.Set)
		}
		for _, m := range ch.Remove {
			if _, ok := set[memberKey(m)]; !ok {
				return fmt.Errorf("set %s: remove missing %s", ch.Set, memberKey(m))
			}
			delete(set, memberKey(m))
		}
		for _, m := range ch.Add {
			if _, ok := set[memberKey(m)]; ok {
				return fmt.Errorf("set %s: add present %s", ch.Set, memberKey(m))
			}
			set[memberKey(m)] = m
		}
	}
	for _, p := range delta.Policies {
		if err := d.checkRefs(p); err != nil {
			return err
		}
		d.policies[p.Name()] = p
	}
	for _, p := range delta.Pods {
		for _, pol := range p.Policies {
			if _, ok := d.policies[dataplane.PolicyChainName(pol, p.Dir)]; !ok {
				return fmt.Errorf("pod chain %s jumps to missing %s", p.Name(), dataplane.PolicyChainName(pol, p.Dir))
			}
		}
		d.pods[p.Name()] = p
	}
	for _, p := range delta.RemovePolicies {
		if _, ok := d.policies[p.Name()]; !ok {
			return fmt.Errorf("remove missing chain %s", p.Name())
		}
		for _, pod := range d.pods {
			if pod.Verdict == dataplane.Isolated && pod.Dir == p.Dir && slices.Contains(pod.Policies, p.Policy) {
				return fmt.Errorf("remove chain %s: %s jumps to it", p.Name(), pod.Name())
			}
		}
		delete(d.policies, p.Name())
	}
	for _, s := range delta.RemoveSets {
		if _, ok := d.sets[s.Name]; !ok {
			return fmt.Errorf("remove missing set %s", s.Name)
		}
		for _, p := range d.policies {
			if slices.Contains(setsOf(p), s.Name) {
				return fmt.Errorf("remove set %s: %s uses it", s.Name, p.Name())
			}
		}
		delete(d.sets, s.Name)
		delete(d.kinds, s.Name)
	}
	for _, p := range delta.Pointers {
		d.pointers[p.Addr] = p.Pod
	}
	for _, p := range delta.Unpoint {
		// As the kernel's: only the element pierd added for that pod goes.
		if d.pointers[p.Addr] == p.Pod {
			delete(d.pointers, p.Addr)
		}
	}
	return nil
}

func setsOf(p dataplane.PolicyChain) []string {
	var out []string
	for _, r := range p.Rules {
		for _, peer := range r.Peers {
			if peer.Set != "" {
				out = append(out, peer.Set)
			}
		}
		for _, port := range r.Ports {
			if port.Name != "" {
				out = append(out, dataplane.PortSetName(port.Name))
			}
		}
	}
	return out
}

func (d *memDP) checkRefs(p dataplane.PolicyChain) error {
	for _, s := range setsOf(p) {
		if _, ok := d.sets[s]; !ok {
			return fmt.Errorf("chain %s refers to missing set %s", p.Name(), s)
		}
	}
	return nil
}

func (d *memDP) Resync(s dataplane.State) ([]dataplane.PodChain, error) {
	d.resyncs++
	fresh := newMemDP()
	for _, set := range s.Sets {
		fresh.sets[set.Name], fresh.kinds[set.Name] = map[string]dataplane.Member{}, set.Kind
		for _, m := range set.Members {
			fresh.sets[set.Name][memberKey(m)] = m
		}
	}
	for _, p := range s.Policies {
		fresh.policies[p.Name()] = p
	}
	for _, p := range s.Pods {
		fresh.pods[p.Name()] = p
	}
	for _, p := range s.Pointers {
		fresh.pointers[p.Addr] = p.Pod
	}
	for _, p := range s.Policies {
		if err := fresh.checkRefs(p); err != nil {
			return nil, err
		}
	}
	d.sets, d.kinds, d.policies, d.pods, d.pointers = fresh.sets, fresh.kinds, fresh.policies, fresh.pods, fresh.pointers
	return nil, nil
}

func (d *memDP) RemovePods(pods []dataplane.PodChain) ([]dataplane.PodChain, error) {
	var left []dataplane.PodChain
	var call []string
	for _, p := range pods {
		call = append(call, p.Name())
		if d.busy[p.Name()] {
			left = append(left, p)
			continue
		}
		d.removed = append(d.removed, p.Name())
		delete(d.pods, p.Name())
	}
	d.removals = append(d.removals, call)
	return left, nil
}

// dump renders the model for comparisons: sets with sorted members,
// chains with their content. Pointers are left out: a delta repoints only
// new addresses, a resync lists them all.
func (d *memDP) dump() string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(d.sets)) {
		keys := slices.Sorted(maps.Keys(d.sets[name]))
		fmt.Fprintf(&b, "set %s %v\n", name, keys)
	}
	for _, name := range slices.Sorted(maps.Keys(d.policies)) {
		fmt.Fprintf(&b, "chain %s %+v\n", name, d.policies[name].Rules)
	}
	for _, name := range slices.Sorted(maps.Keys(d.pods)) {
		p := d.pods[name]
		fmt.Fprintf(&b, "chain %s %d %v\n", name, p.Verdict, p.Policies)
	}
	return b.String()
}

// allows evaluates what the kernel's chains would: the local pod's chain
// of direction dir for traffic to or from peer (addr), with the
// destination's address, protocol and port.
func (d *memDP) allows(pod dataplane.Ref, dir dataplane.Direction, peer, dst netip.Addr, proto uint8, port uint16) bool {
	c, ok := d.pods[dataplane.PodChainName(pod, dir)]
	if !ok {
		return false // no chain: the plugin's element leads to ChainUnclassified
	}
	switch c.Verdict {
	case dataplane.Open:
		return true
	case dataplane.Gone:
		return false
	}
	for _, pol := range c.Policies {
		for _, r := range d.policies[dataplane.PolicyChainName(pol, dir)].Rules {
			if d.peerMatches(r.Peers, peer) && d.portMatches(r.Ports, dst, proto, port) {
				return true
			}
		}
	}
	return false
}

func (d *memDP) peerMatches(peers []dataplane.Peer, a netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		switch {
		case p.Set != "":
			if _, ok := d.sets[p.Set][memberKey(dataplane.Member{Addr: a})]; ok {
				return true
			}
		case p.CIDR.Contains(a) && !slices.ContainsFunc(p.Except, func(e netip.Prefix) bool { return e.Contains(a) }):
			return true
		case !p.CIDR.IsValid():
			return true
		}
	}
	return false
}

func (d *memDP) portMatches(ports []dataplane.Port, dst netip.Addr, proto uint8, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		switch {
		case p.Proto != proto:
		case p.Name != "":
			if _, ok := d.sets[dataplane.PortSetName(p.Name)][memberKey(dataplane.Member{Addr: dst, Proto: proto, Port: port})]; ok {
				return true
			}
		case p.First == 0 || p.First <= port && port <= max(p.Last, p.First):
			return true
		}
	}
	return false
}
