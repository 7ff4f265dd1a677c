package inspect

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/leases"
	"github.com/pier-cni/pier/internal/nat"
)

// Network summarizes a network on this node.
type Network struct {
	Network     string         `json:"network"`
	ConfigFrom  string         `json:"configFrom"`
	Settings    []Item         `json:"settings"`
	Bridge      *Bridge        `json:"bridge,omitempty"`
	Attachments []Member       `json:"attachments"`
	Pool        *leases.Status `json:"pool,omitempty"`
	Rules       *Rules         `json:"rules,omitempty"`
	Notes       []string       `json:"notes,omitempty"`
	Problems    []string       `json:"problems,omitempty"`
}

// Member is one attachment as the network summary sees it: which of the
// pieces an ADD builds are present.
type Member struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifname"`
	HostVeth    string   `json:"hostVeth,omitempty"`
	Reserved    []string `json:"reserved"`
	Masquerade  []string `json:"masquerade"`
	Cached      bool     `json:"cached"`
	NetNS       string   `json:"netns,omitempty"`
	State       string   `json:"state"`
}

// Rules is the network's part of table inet pier.
type Rules struct {
	Elements int    `json:"elements"`
	Listing  string `json:"listing"` // the chains and maps, elements left out
	Why      string `json:"why"`
}

// Summarize describes network name: its settings, bridge, attachments, pool
// and masquerade rules.
func Summarize(ctx context.Context, name string, opts Options) (*Network, error) {
	n, err := confdir.Load(opts.ConfDir, name)
	if err != nil {
		return nil, err
	}
	s := &Network{Network: name, ConfigFrom: n.File, Attachments: []Member{}}
	if n.ConfErr != nil {
		s.Problems = append(s.Problems, fmt.Sprintf("pier refuses the config: %v", n.ConfErr))
	}
	v := &view{a: &Attachment{Network: name}, net: n, conf: n.Conf, opts: opts}
	if ic, err := n.PierIPAM(); err == nil {
		v.ipam = ic
		if s.Pool, err = opts.Leases.Status(ctx, ic); err != nil {
			s.Problems = append(s.Problems, fmt.Sprintf("pool: %v", err))
		}
	}
	members := map[string]*Member{}
	if n.Conf != nil {
		s.Settings = settings(n.Conf, n.IPAM)
		v.readBridge()
		s.Bridge = v.a.Bridge
		s.Problems = append(s.Problems, v.a.Problems...)
		s.collectVeths(n.Conf, members)
		s.collectMasq(n, members)
	}
	if err := s.collectReservations(ctx, v, members); err != nil {
		s.Problems = append(s.Problems, err.Error())
	}
	s.collectCache(opts, members)
	s.finish(n, members)
	return s, nil
}

func member(members map[string]*Member, cid, ifName string) *Member {
	k := cid + "/" + ifName
	if m, ok := members[k]; ok {
		return m
	}
	m := &Member{ContainerID: cid, IfName: ifName, Reserved: []string{}, Masquerade: []string{}}
	members[k] = m
	return m
}

func (s *Network) collectVeths(c *config.NetConf, members map[string]*Member) {
	ports, err := bridge.Ports(c.Bridge)
	if err != nil {
		return // a missing bridge is reported with the bridge
	}
	for _, p := range ports {
		network, cid, ifName, ok := parseAlias(p.Alias)
		if ok && network == c.Name {
			member(members, cid, ifName).HostVeth = p.Name
		}
	}
}

func (s *Network) collectMasq(n *confdir.Network, members map[string]*Member) {
	if !n.Conf.IPMasq {
		s.Notes = append(s.Notes, `"ipMasq" is false: no masquerade`)
		return
	}
	elems, err := nat.ListMasq(n.Name)
	if err != nil {
		s.Problems = append(s.Problems, fmt.Sprintf("masquerade: %v", err))
		return
	}
	for _, e := range elems {
		cid, ifName, ok := strings.Cut(e.Owner, "/")
		if !ok {
			s.Problems = append(s.Problems, fmt.Sprintf("masquerade element %s has owner %q, not container/ifname", e.Addr, e.Owner))
			continue
		}
		m := member(members, cid, ifName)
		m.Masquerade = append(m.Masquerade, e.Addr.String())
	}
	net := nat.Network{Name: n.Name}
	var subnets []string
	if n.IPAM != nil {
		for _, set := range n.IPAM.RangeSets {
			for _, r := range set {
				net.Subnets = append(net.Subnets, r.Subnet)
				subnets = append(subnets, r.Subnet.String())
			}
		}
	}
	s.Rules = &Rules{Elements: len(elems), Listing: nat.Describe(net),
		Why: fmt.Sprintf(`"ipMasq": one rule per family looks the source up in the network's maps; each container address is one element jumping to the chain that leaves %s and multicast alone and masquerades the rest`, strings.Join(subnets, ", "))}
}

func (s *Network) collectReservations(ctx context.Context, v *view, members map[string]*Member) error {
	if v.ipam == nil {
		if v.net.IPAM != nil {
			s.Notes = append(s.Notes, fmt.Sprintf("IPAM is delegated to %q: its state is not read here", v.net.IPAM.Type))
		}
		return nil
	}
	res, err := v.opts.Leases.List(ctx, v.ipam)
	if err != nil {
		return fmt.Errorf("reservations: %w", err)
	}
	for _, r := range res {
		if r.Problem != "" {
			s.Problems = append(s.Problems, fmt.Sprintf("reservation %s is unreadable: %s", r.Addr, r.Problem))
			continue
		}
		m := member(members, r.Owner.ContainerID, r.Owner.IfName)
		m.Reserved = append(m.Reserved, r.Addr.String())
	}
	return nil
}

func (s *Network) collectCache(opts Options, members map[string]*Member) {
	if opts.Cache == nil {
		return
	}
	cached, err := opts.Cache.GetCachedAttachments("")
	if err != nil {
		s.Problems = append(s.Problems, fmt.Sprintf("libcni cache: %v", err))
		return
	}
	for _, a := range cached {
		if a.Network == s.Network {
			m := member(members, a.ContainerID, a.IfName)
			m.Cached, m.NetNS = true, a.NetNS
		}
	}
}

// finish sorts the members and states what each is missing.
func (s *Network) finish(n *confdir.Network, members map[string]*Member) {
	keys := make([]string, 0, len(members))
	for k := range members {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	pierIPAM := n.IPAM != nil && n.IPAM.Type == config.IPAMType
	masq := n.Conf != nil && n.Conf.IPMasq
	for _, k := range keys {
		m := members[k]
		var missing []string
		if n.Conf != nil && m.HostVeth == "" {
			missing = append(missing, "host veth")
		}
		if pierIPAM && len(m.Reserved) == 0 {
			missing = append(missing, "IPAM reservation")
		}
		if masq && len(m.Masquerade) == 0 {
			missing = append(missing, "masquerade element")
		}
		for _, a := range m.Masquerade {
			if pierIPAM && !slices.Contains(m.Reserved, a) {
				missing = append(missing, "reservation of masqueraded "+a)
			}
		}
		switch {
		case len(missing) == 0:
			m.State = "complete: everything an ADD builds is there"
		case m.HostVeth == "" && !m.Cached:
			m.State = "stale: lacks " + strings.Join(missing, ", ") + "; no runtime knows it, so GC ('pierctl gc " + s.Network + "') removes the rest"
		default:
			m.State = "incomplete: lacks " + strings.Join(missing, ", ") + "; CHECK fails, DEL or GC cleans it"
		}
		s.Attachments = append(s.Attachments, *m)
	}
}

// settings lists the config values that shape what ADD builds, each with
// its effect.
func settings(c *config.NetConf, ic *config.IPAMConfig) []Item {
	onOff := func(b bool) string { return fmt.Sprint(b) }
	items := []Item{
		{Value: "bridge: " + c.Bridge, Why: "every container of the network gets a port on it"},
		{Value: "isGateway: " + onOff(c.IsGateway), Why: "the bridge holds each range's gateway and the node forwards (when true)"},
		{Value: "isDefaultGateway: " + onOff(c.IsDefaultGateway), Why: "containers get a default route via the bridge (when true)"},
		{Value: "ipMasq: " + onOff(c.IPMasq), Why: "container traffic leaving the network's subnets is masqueraded (when true)"},
		{Value: "hairpinMode: " + onOff(c.HairpinMode), Why: "a container can reach itself through the bridge (when true)"},
	}
	mtu := "kernel default"
	if c.MTU != 0 {
		mtu = fmt.Sprint(c.MTU)
	}
	items = append(items, Item{Value: "mtu: " + mtu, Why: "MTU of each veth pair"})
	if ic != nil {
		items = append(items, Item{Value: "ipam: " + ic.Type, Why: ipamWhy(ic)})
	}
	if ic == nil || ic.Type != config.IPAMType {
		items = append(items, Item{Value: "stateDir: " + c.DelegatedStateDir(),
			Why: "Pier's own state of the network (its attachment records), here since its IPAM is delegated"})
	}
	return items
}

func ipamWhy(ic *config.IPAMConfig) string {
	if ic.Type != config.IPAMType {
		return "delegated: pier execs this plugin from CNI_PATH"
	}
	var sets []string
	for _, s := range ic.RangeSets {
		sets = append(sets, s.String())
	}
	return fmt.Sprintf("embedded allocator, one address per range set (%s), store %s/%s", strings.Join(sets, "; "), ic.DataDir, ic.Name)
}
