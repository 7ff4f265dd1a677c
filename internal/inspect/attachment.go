package inspect

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/bridge"
	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/container"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/veth"
)

// Attachment is everything about one container interface of one network.
// Each part carries Why: one line saying what in the config put it there.
type Attachment struct {
	Network     string     `json:"network"`
	ContainerID string     `json:"containerID"`
	IfName      string     `json:"ifname"`
	NetNS       string     `json:"netns,omitempty"`
	FoundIn     []string   `json:"foundIn"`
	ConfigFrom  string     `json:"configFrom,omitempty"`
	Bridge      *Bridge    `json:"bridge,omitempty"`
	HostVeth    *HostVeth  `json:"hostVeth,omitempty"`
	Interface   *Interface `json:"interface,omitempty"`
	Addresses   []Item     `json:"addresses"`
	Routes      []Route    `json:"routes"`
	Masquerade  []Masq     `json:"masquerade"`
	// NetworkPolicy is the attachment's entry into network policy
	// ("networkPolicy": true): its pod and the policies isolating it.
	NetworkPolicy *Policy `json:"networkPolicy,omitempty"`
	// SourceCheck is the addresses the host veth may send from
	// ("ipspoofchk", or "networkPolicy").
	SourceCheck  *Item         `json:"sourceCheck,omitempty"`
	PortMappings []PortMapping `json:"portMappings"`
	Bandwidth    *Bandwidth    `json:"bandwidth,omitempty"`
	Reservations []Reservation `json:"reservations"`
	Notes        []string      `json:"notes,omitempty"`
	Problems     []string      `json:"problems,omitempty"`

	// OtherPlugins, when set, are the plugin types of a network Pier has
	// no part in (containerd's cni-loopback, say): the attachment is shown
	// as theirs, and nothing of Pier's is expected of it.
	OtherPlugins []string `json:"otherPlugins,omitempty"`
}

// Item is a value and why it is there.
type Item struct {
	Value string `json:"value"`
	Why   string `json:"why"`
}

// Bridge is the node's bridge of the network.
type Bridge struct {
	Name       string `json:"name"`
	Index      int    `json:"index"`
	Up         bool   `json:"up"`
	MTU        int    `json:"mtu"`
	MTUWhy     string `json:"mtuWhy,omitempty"`
	Why        string `json:"why"`
	Gateways   []Item `json:"gateways"`
	Forwarding []Item `json:"forwarding,omitempty"`
	// Setup is the bridge's node-side setup: its marker, isolation, and
	// the host filters opened for it (see hostfw.go).
	Setup []Item `json:"setup,omitempty"`
}

// HostVeth is the node's end of the veth pair.
type HostVeth struct {
	Name      string `json:"name"`
	Index     int    `json:"index"`
	PeerIndex int    `json:"peerIndex"`
	Master    string `json:"master"`
	Hairpin   bool   `json:"hairpin"`
	MTU       int    `json:"mtu"`
	Alias     string `json:"alias"`
	Why       string `json:"why"`
}

// Interface is the container's end of the pair.
type Interface struct {
	Name      string `json:"name"`
	Index     int    `json:"index"`
	PeerIndex int    `json:"peerIndex"`
	MAC       string `json:"mac"`
	MTU       int    `json:"mtu"`
	Why       string `json:"why"`
}

// Route is a route of the container interface.
type Route struct {
	Dst string `json:"dst"`
	Gw  string `json:"gw,omitempty"`
	Why string `json:"why"`
}

// Masq is a masquerade map element.
type Masq struct {
	Addr  string `json:"address"`
	Map   string `json:"map"`
	Owner string `json:"owner"`
	Why   string `json:"why"`
}

// Policy is what the policy maps of table inet pier say of the
// attachment's addresses.
type Policy struct {
	dataplane.PodView
	Why string `json:"why"`
}

// PortMapping is one mapping the runtime asked for.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
	Why           string `json:"why"`
}

// Bandwidth is what the runtime asked for and what shapes the host veth.
type Bandwidth struct {
	Requested map[string]uint64 `json:"requested,omitempty"`
	Qdisc     string            `json:"qdisc,omitempty"`
	Why       string            `json:"why"`
}

// Reservation is the IPAM record of an address.
type Reservation struct {
	Addr     string `json:"address"`
	RangeSet int    `json:"rangeSet"`
	Store    string `json:"store"`
	Why      string `json:"why"`
}

// Attachments inspects every attachment q selects; none found is an error
// saying where inspect looked.
func Attachments(ctx context.Context, q Query, opts Options) ([]*Attachment, error) {
	fs, err := locate(q, opts)
	if err != nil {
		return nil, err
	}
	if len(fs) == 0 {
		what := "container " + q.ContainerID
		if q.ContainerID == "" {
			what = "netns " + q.NetNS
		}
		return nil, fmt.Errorf("no attachment of %s found in libcni's cache or among the host veths of this namespace", what)
	}
	var out []*Attachment
	for _, f := range fs {
		out = append(out, inspectOne(ctx, f, opts))
	}
	return out, nil
}

// view is one attachment being inspected with its network's config.
type view struct {
	a    *Attachment
	net  *confdir.Network
	conf *config.NetConf
	ipam *config.IPAMConfig // nil unless pier-ipam
	res  []ipam.Reservation // this attachment's
	opts Options
	host netlink.Link
}

func (v *view) problem(format string, args ...any) {
	v.a.Problems = append(v.a.Problems, fmt.Sprintf(format, args...))
}

func inspectOne(ctx context.Context, f *found, opts Options) *Attachment {
	a := &Attachment{Network: f.network, ContainerID: f.containerID, IfName: f.ifName, NetNS: f.netns, FoundIn: f.from,
		Addresses: []Item{}, Routes: []Route{}, Masquerade: []Masq{}, PortMappings: []PortMapping{}, Reservations: []Reservation{}}
	v := &view{a: a, opts: opts}
	v.loadConfig(f)
	if len(a.OtherPlugins) > 0 {
		v.readContainer()
		return a
	}
	v.readReservations(ctx)
	v.readHostVeth()
	if v.conf != nil {
		v.readBridge()
	}
	v.readContainer()
	if v.conf != nil {
		v.readMasq()
		v.readPolicy()
		v.readSources()
	}
	v.readCapabilities(f)
	return a
}

// loadConfig takes the config the ADD ran with (libcni's cache) or, failing
// that, the one in the config directory now.
func (v *view) loadConfig(f *found) {
	var n *confdir.Network
	var err error
	if f.cached != nil && len(f.cached.Config) > 0 {
		if n, err = confdir.FromBytes(f.cached.Config); err == nil {
			v.a.ConfigFrom = "libcni cache (the config the ADD ran with)"
		}
	}
	if n == nil && v.opts.ConfDir != "" {
		if n, err = confdir.Load(v.opts.ConfDir, f.network); err == nil {
			v.a.ConfigFrom = n.File
		}
	}
	if n == nil {
		v.problem("no config of network %q found (libcni cache, %s): the reasons below are partial", f.network, v.opts.ConfDir)
		return
	}
	v.net = n
	if n.PluginIndex < 0 {
		v.otherPlugins(n)
		return
	}
	switch {
	case n.ConfErr != nil:
		v.problem("the network's config is refused by pier: %v", n.ConfErr)
	case n.Conf == nil:
		v.a.Notes = append(v.a.Notes, fmt.Sprintf("network %q has no plugin of type pier: only its pier-ipam part is explained", n.Name))
	default:
		v.conf = n.Conf
	}
	if ic, err := n.PierIPAM(); err == nil {
		v.ipam = ic
	} else if n.IPAM != nil && n.IPAM.Type != config.IPAMType {
		v.a.Notes = append(v.a.Notes, fmt.Sprintf("IPAM is delegated to %q: its state is not read here", n.IPAM.Type))
	} else {
		v.problem("IPAM config: %v", err)
	}
}

// otherPlugins marks the attachment as another plugin's: a network with
// neither a pier plugin nor pier-ipam (a runtime adds its own beside
// Pier's: containerd a cni-loopback network for every sandbox). Pier built
// none of it, so none of Pier's pieces is missing.
func (v *view) otherPlugins(n *confdir.Network) {
	for _, p := range n.List.Plugins {
		v.a.OtherPlugins = append(v.a.OtherPlugins, p.Network.Type)
	}
	v.a.Notes = append(v.a.Notes, fmt.Sprintf("an attachment of another plugin (%s, network %s): Pier built none of it and checks nothing of it",
		strings.Join(v.a.OtherPlugins, ", "), n.Name))
}

func (v *view) readReservations(ctx context.Context) {
	if v.ipam == nil || v.opts.Leases == nil {
		return
	}
	all, err := v.opts.Leases.List(ctx, v.ipam)
	if err != nil {
		v.problem("read IPAM reservations: %v", err)
		return
	}
	owner := ipam.Owner{ContainerID: v.a.ContainerID, IfName: v.a.IfName}
	where := v.opts.Leases.Where(v.ipam)
	for _, r := range all {
		if r.Owner != owner {
			continue
		}
		v.res = append(v.res, r)
		why := fmt.Sprintf("pier-ipam holds it for %s; record %s, owner index %s", owner,
			filepath.Join(where, r.Addr.String()), filepath.Join(where, "owners", owner.ContainerID+"@"+owner.IfName))
		if r.RangeSet >= 0 {
			why = fmt.Sprintf("allocated from range set %d (%s); ", r.RangeSet, v.ipam.RangeSets[r.RangeSet]) + why
		}
		v.a.Reservations = append(v.a.Reservations, Reservation{Addr: r.Addr.String(), RangeSet: r.RangeSet, Store: where, Why: why})
	}
	if len(v.res) == 0 {
		v.problem("pier-ipam holds no address for %s: a DEL released it, or the attachment is not Pier's", owner)
	}
}

func (v *view) readHostVeth() {
	name := veth.HostName(v.a.ContainerID, v.a.IfName)
	l, err := netlink.LinkByName(name)
	if err != nil {
		v.problem("host veth %s not found: %v", name, err)
		return
	}
	v.host = l
	at := l.Attrs()
	hv := &HostVeth{Name: name, Index: at.Index, PeerIndex: at.ParentIndex, MTU: at.MTU, Alias: at.Alias}
	if m, err := netlink.LinkByIndex(at.MasterIndex); err == nil && at.MasterIndex != 0 {
		hv.Master = m.Attrs().Name
	}
	hv.Why = fmt.Sprintf("the node's end of the pair, a port of bridge %s; named from a hash of container ID and interface so DEL and GC find it without state; its alias names the attachment", dash(hv.Master))
	if v.conf != nil {
		if hv.Master != v.conf.Bridge {
			v.problem("host veth %s is a port of %q, the config says bridge %q", name, hv.Master, v.conf.Bridge)
		}
		if ports, err := bridge.Ports(v.conf.Bridge); err == nil {
			if i := slices.IndexFunc(ports, func(p bridge.Port) bool { return p.Name == name }); i >= 0 {
				hv.Hairpin = ports[i].Hairpin
			}
		}
		if hv.Hairpin {
			hv.Why += `; hairpin on because "hairpinMode": the bridge may send a frame back out the port it came in, so the container reaches itself through a service address`
		} else if v.conf.HairpinMode {
			v.problem(`host veth %s has hairpin off, but the config sets "hairpinMode"`, name)
		}
	}
	v.a.HostVeth = hv
}

func (v *view) readBridge() {
	c := v.conf
	b := &Bridge{Name: c.Bridge, Gateways: []Item{},
		Why: fmt.Sprintf(`"bridge": %q joins the containers of network %s on this node (created by the first ADD, kept after the last DEL)`, c.Bridge, c.Name)}
	l, err := netlink.LinkByName(c.Bridge)
	if err != nil {
		v.problem("bridge %s not found: %v", c.Bridge, err)
		return
	}
	b.Index, b.Up, b.MTU = l.Attrs().Index, l.Attrs().RawFlags&1 != 0, l.Attrs().MTU
	addrs, err := bridge.Addrs(c.Bridge)
	if err != nil {
		v.problem("addresses of bridge %s: %v", c.Bridge, err)
	}
	for _, gw := range v.gateways() {
		on := slices.Contains(addrs, gw)
		switch {
		case on && c.IsGateway:
			why := `"isGateway": the bridge holds the gateway, so the node is the containers' router`
			if c.IsDefaultGateway {
				why = `"isDefaultGateway" (which implies isGateway): the bridge holds the gateway and the containers' default route points at it`
			}
			b.Gateways = append(b.Gateways, Item{Value: gw.String(), Why: why})
		case on:
			b.Gateways = append(b.Gateways, Item{Value: gw.String(), Why: `on the bridge although "isGateway" is false: put there by hand or by an earlier config`})
		case c.IsGateway:
			v.problem(`bridge %s lacks its gateway %s although "isGateway" is set`, c.Bridge, gw)
		}
	}
	if c.IsGateway {
		b.Forwarding = v.forwarding()
	}
	v.readBridgeSetup(b)
	v.a.Bridge = b
}

// forwarding reads the forwarding sysctls ADD turns on, in the namespace
// pierctl runs in (the node's), for each family the network has gateways of.
func (v *view) forwarding() []Item {
	var out []Item
	for _, fam := range []struct {
		is4  bool
		path string
		key  string
	}{
		{true, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"},
		{false, "/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"},
	} {
		if !slices.ContainsFunc(v.gateways(), func(p netip.Prefix) bool { return p.Addr().Is4() == fam.is4 }) {
			continue
		}
		b, err := os.ReadFile(fam.path)
		if err != nil {
			v.problem("read %s: %v", fam.key, err)
			continue
		}
		val := strings.TrimSpace(string(b))
		out = append(out, Item{Value: fam.key + "=" + val, Why: `"isGateway": the node forwards the containers' traffic`})
		if val != "1" {
			v.problem("%s is off in this namespace although the bridge is the containers' gateway", fam.key)
		}
	}
	return out
}

// gateways returns the gateway of each range, with its subnet's length, as
// ADD puts them on the bridge; from the reservation's range when known.
func (v *view) gateways() []netip.Prefix {
	if v.net == nil || v.net.IPAM == nil {
		return nil
	}
	var out []netip.Prefix
	for _, set := range v.net.IPAM.RangeSets {
		for _, r := range set {
			held := len(v.res) == 0 || slices.ContainsFunc(v.res, func(rv ipam.Reservation) bool { return r.Contains(rv.Addr) })
			p := netip.PrefixFrom(r.Gateway, r.Subnet.Bits())
			if held && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

func (v *view) readContainer() {
	if v.a.NetNS == "" {
		v.a.Notes = append(v.a.Notes, "the container's netns is unknown (not in libcni's cache): give --netns to see its side")
		return
	}
	st, err := container.Read(v.a.NetNS, v.a.IfName)
	if err != nil {
		v.problem("container side: %v", err)
		return
	}
	at := st.Link.Attrs()
	iface := &Interface{Name: at.Name, Index: at.Index, PeerIndex: at.ParentIndex, MAC: at.HardwareAddr.String(), MTU: at.MTU}
	iface.Why = "CNI_IFNAME inside the container, the other end of the pair"
	switch {
	case len(v.a.OtherPlugins) > 0:
		iface.Why = "CNI_IFNAME inside the container, set up by " + strings.Join(v.a.OtherPlugins, ", ")
	case v.conf != nil && v.conf.MTU != 0:
		iface.Why += fmt.Sprintf(`; MTU %d from "mtu"`, v.conf.MTU)
	default:
		iface.Why += "; MTU is the kernel default (the config sets no \"mtu\")"
	}
	if v.host != nil && (v.host.Attrs().ParentIndex != at.Index || at.ParentIndex != v.host.Attrs().Index) {
		v.problem("%s in the container (index %d, peer %d) is not the peer of host veth %s (index %d, peer %d)",
			at.Name, at.Index, at.ParentIndex, v.host.Attrs().Name, v.host.Attrs().Index, v.host.Attrs().ParentIndex)
	}
	v.a.Interface = iface
	for _, p := range st.Addrs {
		v.a.Addresses = append(v.a.Addresses, Item{Value: p.String(), Why: v.addrWhy(p)})
	}
	for _, r := range st.Routes {
		rt := Route{Dst: r.Dst.String(), Why: v.routeWhy(r)}
		if r.Gw.IsValid() {
			rt.Gw = r.Gw.String()
		}
		v.a.Routes = append(v.a.Routes, rt)
	}
}

func (v *view) addrWhy(p netip.Prefix) string {
	if len(v.a.OtherPlugins) > 0 {
		return "set up by " + strings.Join(v.a.OtherPlugins, ", ")
	}
	for _, r := range v.res {
		if r.Addr == p.Addr() {
			if r.RangeSet >= 0 {
				return fmt.Sprintf("from pier-ipam, range set %d (%s); the prefix length is the subnet's", r.RangeSet, v.ipam.RangeSets[r.RangeSet])
			}
			return "from pier-ipam (its range is no longer in the config)"
		}
	}
	if v.net != nil && v.net.IPAM != nil && v.net.IPAM.Type != config.IPAMType {
		return fmt.Sprintf("from the delegated IPAM plugin %q", v.net.IPAM.Type)
	}
	if v.ipam != nil {
		v.problem("address %s on %s is not reserved for this attachment in Pier's store", p, v.a.IfName)
	}
	return "not in Pier's IPAM records for this attachment: added by another plugin or by hand"
}

func (v *view) routeWhy(r container.Route) string {
	if len(v.a.OtherPlugins) > 0 {
		return "set up by " + strings.Join(v.a.OtherPlugins, ", ") + " or the kernel"
	}
	if v.net == nil || v.net.IPAM == nil {
		return "(no config to explain it)"
	}
	for _, cr := range v.net.IPAM.Routes {
		dst, ok := netip.AddrFromSlice(cr.Dst.IP)
		ones, _ := cr.Dst.Mask.Size()
		if !ok || netip.PrefixFrom(dst.Unmap(), ones).Masked() != r.Dst {
			continue
		}
		if cr.GW != nil {
			return fmt.Sprintf(`"ipam.routes" entry {dst %s, gw %s}`, cr.Dst.String(), cr.GW)
		}
		why := fmt.Sprintf(`"ipam.routes" entry {dst %s} without "gw": it goes via the range's gateway`, cr.Dst.String())
		if v.conf != nil && v.conf.IsGateway {
			why += `, which is on the bridge because "isGateway"`
		}
		return why
	}
	if r.Dst.Bits() == 0 && v.conf != nil && v.conf.IsDefaultGateway {
		return `"isDefaultGateway": a default route via the bridge's gateway`
	}
	return "not from the config: added by another plugin or by hand"
}

func (v *view) readMasq() {
	c := v.conf
	if !c.IPMasq {
		v.a.Notes = append(v.a.Notes, `"ipMasq" is false: the container's traffic leaves the node with its own address`)
		return
	}
	elems, err := nat.ListMasq(c.Name)
	if err != nil {
		v.problem("read masquerade elements: %v", err)
		return
	}
	owner := nat.StoredOwner(v.a.ContainerID + "/" + v.a.IfName)
	subnets := v.subnets()
	for _, e := range elems {
		if e.Owner != owner {
			continue
		}
		v.a.Masquerade = append(v.a.Masquerade, Masq{Addr: e.Addr.String(), Map: masqMap(c.Name, e.Addr), Owner: e.Owner,
			Why: fmt.Sprintf(`"ipMasq": packets from %s to anywhere but %s and multicast leave the node with its address (one map element per container, no chain per container)`, e.Addr, subnets)})
	}
	for _, a := range v.a.Addresses {
		p, err := netip.ParsePrefix(a.Value)
		if err == nil && !slices.ContainsFunc(v.a.Masquerade, func(m Masq) bool { return m.Addr == p.Addr().String() }) {
			v.problem(`"ipMasq" is set but %s has no masquerade element owned by %s`, p.Addr(), owner)
		}
	}
}

func (v *view) subnets() string {
	if v.net == nil || v.net.IPAM == nil {
		return "the network's subnets"
	}
	var out []string
	for _, set := range v.net.IPAM.RangeSets {
		for _, r := range set {
			if s := r.Subnet.String(); !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return strings.Join(out, ", ")
}

// masqMap names the map holding an element, as package nat names it for
// networks of up to 40 bytes (longer names are shortened with a hash).
func masqMap(network string, a netip.Addr) string {
	fam := "4"
	if a.Is6() && !a.Is4In6() {
		fam = "6"
	}
	if len(network) > 40 {
		return fmt.Sprintf("inet %s (the masq%s map of network %s)", nat.TableName, fam, network)
	}
	return fmt.Sprintf("inet %s %s-masq%s", nat.TableName, network, fam)
}

// readCapabilities reports the port mappings and bandwidth the runtime
// asked for (libcni's cache keeps the capability arguments), who serves
// them, and the shaping found on the host veth.
func (v *view) readCapabilities(f *found) {
	var caps map[string]any
	if f.cached != nil {
		caps = f.cached.CapabilityArgs
	}
	if raw, ok := caps["portMappings"]; ok {
		var pms []PortMapping
		b, _ := json.Marshal(raw) // came from JSON
		if err := json.Unmarshal(b, &pms); err != nil {
			v.problem("cached portMappings cannot be read: %v", err)
		}
		why := v.capabilityWhy("portMappings")
		for _, pm := range pms {
			pm.Why = why
			v.a.PortMappings = append(v.a.PortMappings, pm)
		}
	}
	var bw *Bandwidth
	if raw, ok := caps["bandwidth"]; ok {
		bw = &Bandwidth{Requested: map[string]uint64{}, Why: v.capabilityWhy("bandwidth")}
		b, _ := json.Marshal(raw)            // came from JSON
		_ = json.Unmarshal(b, &bw.Requested) // partial values are still worth showing
	}
	if q := v.tbf(); q != "" {
		if bw == nil {
			bw = &Bandwidth{Why: "a tbf qdisc on the host veth shapes traffic to the container (put there by a bandwidth plugin or by hand)"}
		}
		bw.Qdisc = q
	}
	v.a.Bandwidth = bw
}

func (v *view) capabilityWhy(capability string) string {
	if v.net == nil {
		return fmt.Sprintf("asked for by the runtime (capability %s)", capability)
	}
	var by []string
	for _, p := range v.net.List.Plugins {
		if p.Network.Capabilities[capability] {
			by = append(by, p.Network.Type)
		}
	}
	if len(by) == 0 {
		return fmt.Sprintf("asked for by the runtime (capability %s), but no plugin of the network declares the capability, so libcni passed it to none", capability)
	}
	return fmt.Sprintf("asked for by the runtime (capability %s), served by plugin %s of the network's list", capability, strings.Join(by, ", "))
}

// tbf describes a token bucket qdisc on the host veth, the bandwidth
// plugin's ingress shaping.
func (v *view) tbf() string {
	if v.host == nil {
		return ""
	}
	qs, err := netlink.QdiscList(v.host)
	if err != nil {
		return ""
	}
	for _, q := range qs {
		if t, ok := q.(*netlink.Tbf); ok {
			return fmt.Sprintf("tbf on %s: rate %d bit/s, buffer %d", v.host.Attrs().Name, t.Rate*8, t.Buffer)
		}
	}
	return ""
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// readPolicy finds the attachment's elements in the policy maps.
func (v *view) readPolicy() {
	if !v.conf.NetworkPolicy {
		return
	}
	pods, err := dataplane.LocalPods()
	if err != nil {
		v.problem("read network policy elements: %v", err)
		return
	}
	owner := nat.NodeOwner(v.conf.Name, v.a.ContainerID+"/"+v.a.IfName)
	for _, p := range pods {
		if p.Owner == owner {
			v.a.NetworkPolicy = &Policy{PodView: p, Why: `"networkPolicy": the ADD entered each address into the maps np-ingress and np-egress, leading to its pod's chains, which pierd keeps from the Kubernetes API`}
			return
		}
	}
	v.problem(`"networkPolicy" is set but no element of the policy maps names %s: the attachment's traffic escapes network policy`, owner)
}

// readSources finds the host veth's source check: its element in
// ipspoof-ports and the addresses bound to it, which should be the
// container's.
func (v *view) readSources() {
	if !v.conf.SourceCheck() {
		return
	}
	all, err := nat.ListNodeElements()
	if err != nil {
		v.problem("read the source address check: %v", err)
		return
	}
	port := veth.HostName(v.a.ContainerID, v.a.IfName)
	checked := false
	var bound []string
	for _, e := range all.Sources {
		switch {
		case e.Port != port:
		case e.Addr.IsValid():
			bound = append(bound, e.Addr.String())
		default:
			checked = true
		}
	}
	why := `"ipspoofchk": the bridge port drops what the container sends from any other address (table bridge pier, chain ipspoof)`
	if v.conf.NetworkPolicy {
		why = `"networkPolicy" (which classifies traffic by its source address): the bridge port drops what the container sends from any other address (table bridge pier, chain ipspoof)`
	}
	if !checked {
		v.problem("the source address check is on but port %s is not in set ipspoof-ports: the container can send from any address", port)
		return
	}
	slices.Sort(bound)
	list := strings.Join(bound, ", ")
	if list == "" {
		list = "no address"
	}
	v.a.SourceCheck = &Item{Value: fmt.Sprintf("%s may send from %s", port, list), Why: why}
	// The container's addresses, as its interface (when its netns is
	// known) and IPAM (pier-ipam) say.
	var own []netip.Addr
	for _, ad := range v.a.Addresses {
		if p, err := netip.ParsePrefix(ad.Value); err == nil && p.Addr().IsGlobalUnicast() {
			own = append(own, p.Addr())
		}
	}
	for _, r := range v.res {
		own = append(own, r.Addr)
	}
	for _, a := range own {
		if !slices.Contains(bound, a.String()) {
			v.problem("the container's address %s is not bound to port %s: what it sends from it is dropped", a, port)
			bound = append(bound, a.String()) // once
		}
	}
}
