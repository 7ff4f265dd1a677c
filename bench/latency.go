package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// network is one implementation's network in the sandbox, with the number
// of background containers attached to it so far.
type network struct {
	im                   impl
	masq                 bool
	name, bridge, subnet string
	attached             int
}

func (n *network) conf() string { return n.im.conf(n.name, n.bridge, n.subnet, n.masq) }

// latencyNetworks gives each implementation a network with and one without
// masquerade, each on its own bridge and /16.
func latencyNetworks(impls []impl) []*network {
	var nets []*network
	for _, masq := range []bool{true, false} {
		for _, im := range impls {
			i := len(nets)
			tag := map[bool]string{true: "masq", false: "plain"}[masq]
			nets = append(nets, &network{im: im, masq: masq, name: fmt.Sprintf("b-%s-%s", im.name, tag),
				bridge: fmt.Sprintf("bb%d", i), subnet: fmt.Sprintf("10.%d.0.0/16", 60+i)})
		}
	}
	return nets
}

// measureLatencies measures ADD and DEL with N containers already attached,
// for every N, interleaving networks and rotating their order each run.
func measureLatencies(sb *sandbox, impls []impl, o options, rep *report) error {
	nets := latencyNetworks(impls)
	for _, n := range o.counts {
		fmt.Printf("attaching background containers up to N=%d …\n", n)
		for _, net := range nets {
			if err := attachUpTo(sb, net, n); err != nil {
				return err
			}
		}
		samples := map[*network]*latencySample{}
		for _, net := range nets {
			samples[net] = &latencySample{n: n, impl: net.im.name, masq: net.masq}
		}
		for r := range o.runs {
			for i := range nets {
				net := nets[(i+r)%len(nets)]
				if err := measureOne(sb, net, fmt.Sprintf("m%d-%d", n, r), samples[net]); err != nil {
					return err
				}
			}
		}
		for _, net := range nets {
			rep.latency = append(rep.latency, *samples[net])
		}
		nat, err := countNAT(sb, nets)
		if err != nil {
			return err
		}
		nat.n = n
		rep.nat = append(rep.nat, nat)
	}
	return nil
}

func attachUpTo(sb *sandbox, net *network, n int) error {
	for ; net.attached < n; net.attached++ {
		nsPath, ifName, err := sb.slot()
		if err != nil {
			return err
		}
		c := &call{im: net.im, verb: "ADD", id: fmt.Sprintf("bg-%s-%d", net.name, net.attached), netns: nsPath, ifName: ifName, conf: net.conf()}
		if err := sb.run(c); err != nil {
			return err
		}
	}
	return nil
}

// latencySample holds one cell's measurements.
type latencySample struct {
	n         int
	impl      string
	masq      bool
	add, del  []time.Duration
	addRSSKiB []int64
}

// measureOne attaches a fresh container, as a runtime would a new pod, and
// removes it again, timing both.
func measureOne(sb *sandbox, net *network, id string, s *latencySample) error {
	nsPath, err := sb.newContainer()
	if err != nil {
		return err
	}
	add := &call{im: net.im, verb: "ADD", id: id, netns: nsPath, ifName: "eth0", conf: net.conf()}
	if err := sb.run(add); err != nil {
		return err
	}
	del := &call{im: net.im, verb: "DEL", id: id, netns: nsPath, ifName: "eth0", conf: net.conf()}
	if err := sb.run(del); err != nil {
		return err
	}
	s.add = append(s.add, add.elapsed)
	s.del = append(s.del, del.elapsed)
	s.addRSSKiB = append(s.addRSSKiB, add.maxRSS)
	return sb.dropContainer(nsPath)
}

// natCount is the NAT state in the node after N containers per network.
type natCount struct {
	n                    int
	pierRules, pierElems int
	refChains, refRules  int
	pierErr, refErr      string
}

func countNAT(sb *sandbox, nets []*network) (natCount, error) {
	var c natCount
	if out, err := sb.inNode("nft", "-j", "list", "table", "inet", "pier"); err != nil {
		c.pierErr = err.Error()
	} else {
		c.pierRules, c.pierElems = countNftables(out)
	}
	if out, err := sb.inNode("iptables-save", "-t", "nat"); err != nil {
		c.refErr = err.Error()
	} else {
		for _, line := range strings.Split(out, "\n") {
			switch {
			case strings.HasPrefix(line, ":CNI-"):
				c.refChains++
			case strings.HasPrefix(line, "-A CNI-"), strings.HasPrefix(line, "-A POSTROUTING") && strings.Contains(line, "CNI-"):
				c.refRules++
			}
		}
	}
	return c, nil
}

// countNftables counts the rules and map/set elements of an `nft -j` table.
func countNftables(out string) (rules, elems int) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if json.Unmarshal([]byte(out), &doc) != nil {
		return 0, 0
	}
	for _, obj := range doc.Nftables {
		if _, ok := obj["rule"]; ok {
			rules++
		}
		for _, kind := range []string{"map", "set"} {
			if raw, ok := obj[kind]; ok {
				var s struct {
					Elem []json.RawMessage `json:"elem"`
				}
				_ = json.Unmarshal(raw, &s) // a set without elements has no "elem"
				elems += len(s.Elem)
			}
		}
	}
	return rules, elems
}
