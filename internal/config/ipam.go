package config

// IPAM configuration: a superset of the reference host-local plugin's keys.
//
// Ranges follow host-local's semantics: a range set yields one address per
// attachment; two range sets (one IPv4, one IPv6) give dual stack. Defaults
// are host-local's: rangeStart = network+1, rangeEnd = broadcast−1 (IPv4) or
// the last address (IPv6), gateway = network+1. Where host-local is lax and
// would hand out an address no host can use (a rangeStart at the network
// address, a rangeEnd at the IPv4 broadcast), Pier refuses the config instead,
// so the allocator never has to second-guess a validated range.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/pier-cni/pier/internal/cnierr"
)

const (
	// IPAMType is the ipam.type served by Pier's own allocator.
	IPAMType = "pier-ipam"
	// DefaultDataDir is where the local store keeps reservations.
	DefaultDataDir = "/var/lib/cni/pier"
)

// Owner identifies one attachment: a container and its interface name. It is
// what a reservation is held by, and what GC's valid list is made of.
type Owner struct {
	ContainerID string
	IfName      string
}

func (o Owner) String() string { return o.ContainerID + "/" + o.IfName }

// Range is one contiguous pool inside a subnet (host-local's "range"). After
// LoadIPAM every field is set, RangeStart <= RangeEnd, and all lie in Subnet.
type Range struct {
	Subnet                        netip.Prefix
	RangeStart, RangeEnd, Gateway netip.Addr
}

// RangeSet is a list of ranges of one address family; one address is
// allocated per range set.
type RangeSet []Range

// IPAMConfig is the validated IPAM part of a network configuration.
type IPAMConfig struct {
	Type       string // IPAMType for ours; anything else means delegate (the caller handles that)
	Name       string // network name (top-level "name")
	CNIVersion string
	RangeSets  []RangeSet // normalized and validated
	Routes     []*types.Route
	DataDir    string
	ResolvConf string
	// DaemonSocket is ipam.daemonSocket: when set, addresses come from
	// pierd over this unix socket (daemon mode) instead of the local store,
	// and DataDir is pierd's business.
	DaemonSocket string
	// Requested addresses from CNI_ARGS IP=, args.cni.ips and
	// runtimeConfig.ips, deduplicated, in that order.
	Requested []netip.Addr
	// ValidAttachments is cni.dev/valid-attachments, given only on GC.
	ValidAttachments []Owner
}

// rangeJSON is a range as written; strings so a bad value becomes an
// InvalidConfig error naming the field rather than a decoding failure.
type rangeJSON struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

type ipamJSON struct {
	Type string `json:"type"`
	rangeJSON
	Ranges     [][]rangeJSON     `json:"ranges"`
	Routes     []json.RawMessage `json:"routes"`
	DataDir    string            `json:"dataDir"`
	ResolvConf string            `json:"resolvConf"`
	// DaemonSocket selects daemon mode; see loadDaemonSocket.
	DaemonSocket string `json:"daemonSocket"`
}

type ipamNetJSON struct {
	CNIVersion    string    `json:"cniVersion"`
	Name          string    `json:"name"`
	IPAM          *ipamJSON `json:"ipam"`
	RuntimeConfig struct {
		IPs      []string      `json:"ips"`
		IPRanges [][]rangeJSON `json:"ipRanges"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
}

// ipamEnvArgs is CNI_ARGS as far as IPAM reads it. MAC= and the pod's
// name are the plugin's, but are listed so that the same CNI_ARGS is
// accepted by both parsers.
type ipamEnvArgs struct {
	types.CommonArgs
	IP                types.UnmarshallableString `json:"ip,omitempty"`
	MAC               types.UnmarshallableString `json:"mac,omitempty"`
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive // the CNI_ARGS key
}

// LoadIPAM parses a whole network config (stdin of a CNI call) and CNI_ARGS.
func LoadIPAM(stdin []byte, envArgs string) (*IPAMConfig, error) {
	var n ipamNetJSON
	if err := json.Unmarshal(stdin, &n); err != nil {
		return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "cannot decode the network configuration")
	}
	if err := validateNetworkName(n.Name); err != nil {
		return nil, err
	}
	if n.IPAM == nil {
		return nil, cnierr.New(cnierr.InvalidConfig, `network %q has no "ipam" section`, n.Name)
	}
	conf := &IPAMConfig{
		Type:       n.IPAM.Type,
		Name:       n.Name,
		CNIVersion: n.CNIVersion,
		DataDir:    n.IPAM.DataDir,
		ResolvConf: n.IPAM.ResolvConf,
	}
	steps := []func(*ipamNetJSON) error{
		conf.loadType, conf.loadDaemonSocket, conf.loadDataDir, conf.loadRanges, conf.loadRoutes,
	}
	for _, step := range steps {
		if err := step(&n); err != nil {
			return nil, err
		}
	}
	if err := conf.loadRequested(&n, envArgs); err != nil {
		return nil, err
	}
	for _, a := range n.ValidAttachments {
		conf.ValidAttachments = append(conf.ValidAttachments, Owner(a))
	}
	return conf, nil
}

// validateNetworkName applies the spec's rule for network names. The name
// becomes a directory under dataDir, so a '/' or ".." would escape it.
func validateNetworkName(name string) error {
	if name == "" {
		return cnierr.New(cnierr.InvalidConfig, `the network configuration has no "name"`)
	}
	if len(name) > MaxNetworkName {
		return cnierr.New(cnierr.InvalidConfig, `"name" is %d bytes long; pier supports network names up to %d bytes`, len(name), MaxNetworkName)
	}
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("_.-", c)) {
			return cnierr.New(cnierr.InvalidConfig,
				`"name": %q is not a valid network name (a letter or digit, then letters, digits, '_', '.', '-')`, name)
		}
	}
	return nil
}

func (c *IPAMConfig) loadType(*ipamNetJSON) error {
	switch {
	case c.Type == "":
		return cnierr.New(cnierr.InvalidConfig, `"ipam.type" is missing (for example %q)`, IPAMType)
	case strings.ContainsAny(c.Type, `/\`) || c.Type == "." || c.Type == "..":
		// The type names a binary in CNI_PATH; a path would let a config
		// execute anything on the node (CVE-2021-20206).
		return cnierr.New(cnierr.InvalidConfig, `"ipam.type": %q must be a plugin name, not a path`, c.Type)
	}
	return nil
}

func (c *IPAMConfig) loadDataDir(*ipamNetJSON) error {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
		return nil
	}
	// A plugin's working directory is whatever the runtime's is; a relative
	// path would scatter state.
	if !filepath.IsAbs(c.DataDir) {
		return cnierr.New(cnierr.InvalidConfig, `"ipam.dataDir": %q must be an absolute path`, c.DataDir)
	}
	c.DataDir = filepath.Clean(c.DataDir)
	return nil
}

func (c *IPAMConfig) loadRoutes(n *ipamNetJSON) error {
	for i, raw := range n.IPAM.Routes {
		r := &types.Route{}
		if err := json.Unmarshal(raw, r); err != nil {
			return cnierr.Wrap(err, cnierr.InvalidConfig, `"ipam.routes[%d]": %s is not a route`, i, raw)
		}
		if r.Dst.IP == nil {
			return cnierr.New(cnierr.InvalidConfig, `"ipam.routes[%d]": %s has no "dst"`, i, raw)
		}
		c.Routes = append(c.Routes, r)
	}
	return nil
}

// loadRanges gathers ranges from runtimeConfig.ipRanges, the legacy single
// range and "ranges", in host-local's order, then normalizes and validates.
func (c *IPAMConfig) loadRanges(n *ipamNetJSON) error {
	type source struct {
		key  string
		sets [][]rangeJSON
	}
	sources := []source{{"runtimeConfig.ipRanges", n.RuntimeConfig.IPRanges}}
	if legacy := n.IPAM.rangeJSON; legacy != (rangeJSON{}) {
		sources = append(sources, source{"ipam", [][]rangeJSON{{legacy}}})
	}
	sources = append(sources, source{"ipam.ranges", n.IPAM.Ranges})
	for _, src := range sources {
		for i, raw := range src.sets {
			key := fmt.Sprintf("%s[%d]", src.key, i)
			if src.key == "ipam" {
				key = "ipam"
			}
			set, err := parseRangeSet(key, raw)
			if err != nil {
				return err
			}
			c.RangeSets = append(c.RangeSets, set)
		}
	}
	if len(c.RangeSets) == 0 {
		return cnierr.New(cnierr.InvalidConfig, `network %q: "ipam" has no "subnet" and no "ranges"`, c.Name)
	}
	if err := checkOverlaps(c.RangeSets); err != nil {
		return err
	}
	return c.checkVersionFamilies()
}

// checkVersionFamilies refuses what spec 0.2.0 and older cannot express: more
// than one address per family in a result.
func (c *IPAMConfig) checkVersionFamilies() error {
	if ok, err := version.GreaterThanOrEqualTo(c.CNIVersion, "0.3.0"); ok || err != nil {
		return nil // an unparseable cniVersion is skel's to refuse, with code 1
	}
	var v4, v6 int
	for _, s := range c.RangeSets {
		if s[0].Subnet.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return cnierr.New(cnierr.InvalidConfig,
			"cniVersion %s results hold one address per family, but the config has %d IPv4 and %d IPv6 range sets",
			c.CNIVersion, v4, v6)
	}
	return nil
}

func parseRangeSet(key string, raw []rangeJSON) (RangeSet, error) {
	if len(raw) == 0 {
		return nil, cnierr.New(cnierr.InvalidConfig, "%q is an empty range set", key)
	}
	set := make(RangeSet, 0, len(raw))
	for j, rj := range raw {
		rkey := key
		if key != "ipam" {
			rkey = fmt.Sprintf("%s[%d]", key, j)
		}
		r, err := parseRange(rkey, rj)
		if err != nil {
			return nil, err
		}
		if j > 0 && r.Subnet.Addr().Is4() != set[0].Subnet.Addr().Is4() {
			return nil, cnierr.New(cnierr.InvalidConfig,
				"%q mixes address families (%s and %s); put IPv4 and IPv6 in separate range sets",
				key, set[0].Subnet, r.Subnet)
		}
		set = append(set, r)
	}
	return set, nil
}

// parseRange decodes one range and fills host-local's defaults. key names the
// range in messages, e.g. "ipam.ranges[1][0]".
func parseRange(key string, rj rangeJSON) (Range, error) {
	subnet, err := parseSubnet(key+".subnet", rj.Subnet)
	if err != nil {
		return Range{}, err
	}
	network := subnet.Addr()
	r := Range{Subnet: subnet, RangeStart: network.Next(), RangeEnd: lastUsable(subnet), Gateway: network.Next()}
	fields := []struct {
		name, value string
		dst         *netip.Addr
	}{
		{"gateway", rj.Gateway, &r.Gateway},
		{"rangeStart", rj.RangeStart, &r.RangeStart},
		{"rangeEnd", rj.RangeEnd, &r.RangeEnd},
	}
	for _, f := range fields {
		if f.value == "" {
			continue
		}
		a, err := parseHostAddr(key+"."+f.name, f.value, subnet)
		if err != nil {
			return Range{}, err
		}
		*f.dst = a
	}
	if r.RangeStart.Compare(r.RangeEnd) > 0 {
		return Range{}, cnierr.New(cnierr.InvalidConfig, `%q: rangeStart %s is after rangeEnd %s in %s`,
			key, r.RangeStart, r.RangeEnd, subnet)
	}
	if r.RangeStart == r.RangeEnd && r.RangeStart == r.Gateway {
		return Range{}, cnierr.New(cnierr.InvalidConfig, `%q: range %s holds only the gateway, nothing to allocate`, key, r)
	}
	return r, nil
}

// parseSubnet accepts a CIDR whose address is the network address. Like
// host-local, a CIDR with host bits set is refused rather than masked: the
// user may have meant a different prefix length.
func parseSubnet(key, s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, cnierr.New(cnierr.InvalidConfig, "%q is missing", key)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, cnierr.Wrap(err, cnierr.InvalidConfig, "%q: %q is not a CIDR subnet", key, s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, cnierr.New(cnierr.InvalidConfig, "%q: %q is an IPv4-mapped IPv6 subnet; write it as IPv4", key, s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, cnierr.New(cnierr.InvalidConfig, "%q: %q has host bits set; the network is %s", key, s, p.Masked())
	}
	// The network address, the gateway and (IPv4) the broadcast address are
	// never handed out, so a /31 or /127 leaves nothing to allocate.
	if p.Bits() > p.Addr().BitLen()-2 {
		return netip.Prefix{}, cnierr.New(cnierr.InvalidConfig,
			"%q: %s is too small to hold a gateway and an address; use /%d or shorter", key, s, p.Addr().BitLen()-2)
	}
	return p, nil
}

// parseHostAddr parses an address that must be a usable host in subnet: not
// the network address nor, for IPv4, the broadcast address.
func parseHostAddr(key, s string, subnet netip.Prefix) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, cnierr.New(cnierr.InvalidConfig, "%q: %q is not an IP address", key, s)
	}
	a = a.Unmap()
	switch {
	case !subnet.Contains(a):
		return netip.Addr{}, cnierr.New(cnierr.InvalidConfig, "%q: %s is outside subnet %s", key, a, subnet)
	case a == subnet.Addr():
		return netip.Addr{}, cnierr.New(cnierr.InvalidConfig, "%q: %s is the network address of %s", key, a, subnet)
	case a.Is4() && a == lastUsable(subnet).Next():
		return netip.Addr{}, cnierr.New(cnierr.InvalidConfig, "%q: %s is the broadcast address of %s", key, a, subnet)
	}
	return a, nil
}

// lastUsable is host-local's default rangeEnd: the last address of the
// subnet, minus the broadcast address for IPv4.
func lastUsable(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b) // cannot fail: b has an address's length
	if last.Is4() {
		return last.Prev()
	}
	return last
}

// Contains reports whether a lies in [RangeStart, RangeEnd].
func (r Range) Contains(a netip.Addr) bool {
	return a.Is4() == r.RangeStart.Is4() && r.RangeStart.Compare(a) <= 0 && a.Compare(r.RangeEnd) <= 0
}

func (r Range) String() string { return r.RangeStart.String() + "-" + r.RangeEnd.String() }

// RangeFor returns the index of the range holding a, or false.
func (s RangeSet) RangeFor(a netip.Addr) (int, bool) {
	for i, r := range s {
		if r.Contains(a) {
			return i, true
		}
	}
	return 0, false
}

// Contains reports whether any range of s holds a.
func (s RangeSet) Contains(a netip.Addr) bool {
	_, ok := s.RangeFor(a)
	return ok
}

func (s RangeSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// loadRequested collects static addresses in host-local's order: CNI_ARGS
// IP= (comma-separated), args.cni.ips, runtimeConfig.ips (capability "ips").
// Which range set each belongs to is the allocator's call, with code 101.
func (c *IPAMConfig) loadRequested(n *ipamNetJSON, envArgs string) error {
	var env ipamEnvArgs
	if err := types.LoadArgs(envArgs, &env); err != nil {
		return cnierr.Wrap(err, cnierr.InvalidEnv, "CNI_ARGS %q cannot be parsed", envArgs)
	}
	type source struct {
		name   string
		values []string
	}
	var envIPs []string
	if env.IP != "" {
		envIPs = strings.Split(string(env.IP), ",")
	}
	sources := []source{
		{"CNI_ARGS IP", envIPs},
		{"args.cni.ips", n.Args.CNI.IPs},
		{"runtimeConfig.ips", n.RuntimeConfig.IPs},
	}
	seen := map[netip.Addr]bool{}
	for _, src := range sources {
		for _, v := range src.values {
			a, err := parseRequested(src.name, v)
			if err != nil {
				return err
			}
			if !seen[a] {
				seen[a] = true
				c.Requested = append(c.Requested, a)
			}
		}
	}
	return nil
}

// parseRequested accepts "10.1.2.3" or "10.1.2.3/24"; the mask is ignored,
// the range's subnet decides the prefix length.
func parseRequested(source, s string) (netip.Addr, error) {
	v := strings.TrimSpace(s)
	var a netip.Addr
	var err error
	if strings.Contains(v, "/") {
		var p netip.Prefix
		p, err = netip.ParsePrefix(v)
		a = p.Addr()
	} else {
		a, err = netip.ParseAddr(v)
	}
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, cnierr.New(cnierr.InvalidConfig, "%s: %q is not an IP address", source, s)
	}
	return a.Unmap(), nil
}
