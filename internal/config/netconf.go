// Package config decodes and validates what a runtime hands a Pier plugin:
// the network configuration on stdin and CNI_ARGS. It is the single place
// where a config value is judged, so `pier`, `pier-ipam` and `pierctl lint`
// accept and refuse exactly the same input.
//
// Compatibility rule: every key the reference `bridge` plugin understands is
// accepted with the same meaning; unknown keys are ignored (runtimes and meta
// plugins add their own), but a known key whose value Pier cannot honour is an
// error naming the key and value (code 2), never silently dropped.
package config

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/pier-cni/pier/internal/cnierr"
)

// DefaultBridge is the bridge name when the config names none.
const DefaultBridge = "pier0"

// Length limits. The network name, container ID and interface name end up
// in a host veth's alias (at most 255 bytes), in store file names (255
// bytes) and in nftables comments; runtimes use 64-character IDs.
const (
	MaxNetworkName = 100
	MaxContainerID = 128
)

// NetConf is the `pier` plugin's network configuration.
type NetConf struct {
	types.NetConf

	Bridge           string `json:"bridge"`
	IsGateway        bool   `json:"isGateway"`
	IsDefaultGateway bool   `json:"isDefaultGateway"`
	ForceAddress     bool   `json:"forceAddress"`
	IPMasq           bool   `json:"ipMasq"`
	IPMasqBackend    string `json:"ipMasqBackend,omitempty"`
	MTU              int    `json:"mtu"`
	HairpinMode      bool   `json:"hairpinMode"`
	PromiscMode      bool   `json:"promiscMode"`
	EnableDAD        bool   `json:"enabledad,omitempty"`
	Vlan             int    `json:"vlan"`
	// MacSpoofChk drops frames from the container whose source MAC is not
	// its interface's (nftables, table bridge pier).
	MacSpoofChk bool `json:"macspoofchk,omitempty"`
	// IPSpoofChk drops packets from the container whose source address is
	// not one of its own (table bridge pier); always on with
	// networkPolicy, which classifies traffic by its source address. Nil:
	// not set.
	IPSpoofChk *bool `json:"ipspoofchk,omitempty"`
	// FirewallBackend and IngressPolicy: see firewall.go.
	FirewallBackend string `json:"firewallBackend,omitempty"`
	IngressPolicy   string `json:"ingressPolicy,omitempty"`
	// StateDir holds Pier's own state (its attachment records) for a
	// network whose IPAM is delegated: see statedir.go.
	StateDir string `json:"stateDir,omitempty"`

	// NonMasqueradeCIDRs are destinations that the containers' traffic
	// reaches with its own source address even with ipMasq, besides the
	// network's own subnets: the cluster's pod CIDRs when each node serves
	// a range of its own (pierd's Kubernetes mode writes them), so traffic
	// between pods of different nodes keeps its source.
	NonMasqueradeCIDRs []string `json:"nonMasqueradeCIDRs,omitempty"`

	// The reference bandwidth plugin's top-level keys (bits/s, bits); when
	// any is set they win over runtimeConfig.bandwidth, as there.
	IngressRate  *uint64 `json:"ingressRate,omitempty"`
	IngressBurst *uint64 `json:"ingressBurst,omitempty"`
	EgressRate   *uint64 `json:"egressRate,omitempty"`
	EgressBurst  *uint64 `json:"egressBurst,omitempty"`

	// Reference keys Pier does not implement yet; refused when set.
	VlanTrunk                 json.RawMessage `json:"vlanTrunk,omitempty"`
	DisableContainerInterface bool            `json:"disableContainerInterface,omitempty"`
	PortIsolation             bool            `json:"portIsolation,omitempty"`

	LogFile  string `json:"logFile,omitempty"`
	LogLevel string `json:"logLevel,omitempty"`

	// NetworkPolicy holds the network's pods to Kubernetes NetworkPolicy,
	// which pierd enforces: ADD enters the container's addresses into
	// the policy maps, leading to its pod's chains (named after
	// K8S_POD_NAMESPACE and K8S_POD_NAME), or, until pierd has made
	// them, to a chain that drops everything.
	NetworkPolicy bool `json:"networkPolicy,omitempty"`

	Args struct {
		Cni struct {
			Mac string `json:"mac,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`
	RuntimeConfig struct {
		Mac          string        `json:"mac,omitempty"`
		PortMappings []PortMapping `json:"portMappings,omitempty"`
		Bandwidth    *Bandwidth    `json:"bandwidth,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	// NonMasquerade is NonMasqueradeCIDRs parsed, host bits cleared.
	NonMasquerade []netip.Prefix `json:"-"`

	// Bandwidth is the limits to apply, from the top-level keys or the
	// capability (see resolveFeatures); nil when nothing is limited.
	Bandwidth *Bandwidth `json:"-"`

	// MAC is the container interface's address after applying the
	// reference's precedence: runtimeConfig.mac, then args.cni.mac, then
	// CNI_ARGS MAC=. Nil lets the kernel choose.
	MAC net.HardwareAddr `json:"-"`

	// PodNamespace and PodName are the Kubernetes pod of the attachment,
	// from CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME (kubelet's
	// runtimes pass them); empty outside Kubernetes.
	PodNamespace, PodName string `json:"-"`
}

// cniArgs is CNI_ARGS as far as the plugin reads it. IP= belongs to IPAM;
// IgnoreUnknown is honoured by types.LoadArgs through CommonArgs. The
// field names are the keys.
type cniArgs struct {
	types.CommonArgs
	MAC               types.UnmarshallableString `json:"mac,omitempty"`
	IP                types.UnmarshallableString `json:"ip,omitempty"`
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive // the CNI_ARGS key
}

// LoadNetConf decodes stdin and CNI_ARGS into a validated NetConf.
func LoadNetConf(stdin []byte, envArgs string) (*NetConf, error) {
	n := &NetConf{Bridge: DefaultBridge}
	if err := json.Unmarshal(stdin, n); err != nil {
		return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "cannot decode the network configuration")
	}
	if n.Bridge == "" {
		n.Bridge = DefaultBridge
	}
	// As with the reference: the default route's gateway must be on the
	// bridge, so isDefaultGateway implies isGateway.
	if n.IsDefaultGateway {
		n.IsGateway = true
	}
	if err := n.validate(); err != nil {
		return nil, err
	}
	if n.RawPrevResult != nil {
		if err := version.ParsePrevResult(&n.NetConf); err != nil {
			return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "prevResult cannot be decoded")
		}
	}
	var args cniArgs
	if envArgs != "" {
		if err := types.LoadArgs(envArgs, &args); err != nil {
			return nil, cnierr.Wrap(err, cnierr.InvalidEnv, "CNI_ARGS %q cannot be parsed", envArgs)
		}
	}
	mac, err := pickMAC(n, envArgs != "", args)
	if err != nil {
		return nil, err
	}
	n.MAC = mac
	n.PodNamespace, n.PodName = string(args.K8S_POD_NAMESPACE), string(args.K8S_POD_NAME)
	return n, nil
}

func (n *NetConf) validate() error {
	if err := validateNetworkName(n.Name); err != nil {
		return err
	}
	if strings.ContainsAny(n.Type, `/\`) {
		return cnierr.New(cnierr.InvalidConfig, `"type": %q must be a plugin name, not a path`, n.Type)
	}
	if err := validateIfName("bridge", n.Bridge); err != nil {
		return err
	}
	if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
		return cnierr.New(cnierr.InvalidConfig, `"mtu": %d is out of range (68..65535, or 0 for the kernel default)`, n.MTU)
	}
	if n.HairpinMode && n.PromiscMode {
		// The reference refuses it too: a promiscuous bridge with hairpin
		// ports sends a container its own frames back.
		return cnierr.New(cnierr.InvalidConfig, `"hairpinMode" and "promiscMode" cannot both be true`)
	}
	if n.IPAM.Type == "" {
		return cnierr.New(cnierr.InvalidConfig, `the network configuration has no "ipam" section with a "type" (for example "pier-ipam")`)
	}
	if strings.ContainsAny(n.IPAM.Type, `/\`) || n.IPAM.Type == "." || n.IPAM.Type == ".." {
		return cnierr.New(cnierr.InvalidConfig, `"ipam.type": %q must be a plugin name, not a path`, n.IPAM.Type)
	}
	if err := n.validateStateDir(); err != nil {
		return err
	}
	if err := n.resolveFeatures(); err != nil {
		return err
	}
	if err := n.validateFirewall(); err != nil {
		return err
	}
	if err := n.parseNonMasquerade(); err != nil {
		return err
	}
	return n.refuseUnsupported()
}

// parseNonMasquerade fills NonMasquerade. A /0 is refused: it would exempt
// every destination, so nothing would ever be masqueraded, which no one who
// sets ipMasq means.
func (n *NetConf) parseNonMasquerade() error {
	n.NonMasquerade = nil
	for _, s := range n.NonMasqueradeCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cnierr.New(cnierr.InvalidConfig, `"nonMasqueradeCIDRs": %q is not a CIDR`, s)
		}
		if p.Bits() == 0 || p.Addr().Zone() != "" {
			return cnierr.New(cnierr.InvalidConfig, `"nonMasqueradeCIDRs": %q would exempt every destination from masquerade`, s)
		}
		n.NonMasquerade = append(n.NonMasquerade, p.Masked())
	}
	return nil
}

// refuseUnsupported turns every known key Pier cannot honour into a code-2
// error: a user who asks for a VLAN must not get an untagged port silently.
func (n *NetConf) refuseUnsupported() error {
	unsupported := []struct {
		key   string
		set   bool
		value any
	}{
		{"vlan", n.Vlan != 0, n.Vlan},
		{"vlanTrunk", len(n.VlanTrunk) > 0 && string(n.VlanTrunk) != "null", string(n.VlanTrunk)},
		{"disableContainerInterface", n.DisableContainerInterface, true},
		{"portIsolation", n.PortIsolation, true},
		{"ipMasqBackend", n.IPMasqBackend != "" && n.IPMasqBackend != "nftables", n.IPMasqBackend},
	}
	for _, u := range unsupported {
		if u.set {
			return cnierr.New(cnierr.UnsupportedField, "%q: %v is not supported by this version of pier", u.key, u.value)
		}
	}
	if n.NetworkPolicy && n.IPSpoofChk != nil && !*n.IPSpoofChk {
		return cnierr.New(cnierr.UnsupportedField, `"ipspoofchk": false cannot go with "networkPolicy": true: policies classify a pod's traffic by its source address, and a pod sending from another's would be judged by that pod's policies`)
	}
	if n.LogLevel != "" {
		if _, err := ParseLogLevel(n.LogLevel); err != nil {
			return err
		}
	}
	return nil
}

// validateIfName applies the kernel's rules for an interface name that comes
// from the config (CNI_IFNAME is checked by skel).
func validateIfName(key, name string) error {
	if len(name) > 15 {
		return cnierr.New(cnierr.InvalidConfig, "%q: %q is longer than the kernel's 15-byte interface name limit", key, name)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return cnierr.New(cnierr.InvalidConfig, "%q: %q is not a valid interface name", key, name)
	}
	return nil
}

func pickMAC(n *NetConf, haveArgs bool, args cniArgs) (net.HardwareAddr, error) {
	var source, value string
	if haveArgs {
		source, value = "CNI_ARGS MAC", string(args.MAC)
	}
	if n.Args.Cni.Mac != "" {
		source, value = "args.cni.mac", n.Args.Cni.Mac
	}
	if n.RuntimeConfig.Mac != "" {
		source, value = "runtimeConfig.mac", n.RuntimeConfig.Mac
	}
	if value == "" {
		return nil, nil
	}
	mac, err := net.ParseMAC(value)
	if err != nil || len(mac) != 6 {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s: %q is not an Ethernet MAC address", source, value)
	}
	if mac[0]&1 == 1 {
		return nil, cnierr.New(cnierr.InvalidConfig, "%s: %q is a multicast address and cannot be an interface's MAC", source, value)
	}
	return mac, nil
}

// SourceCheck reports whether the container's source addresses are
// checked at its bridge port: with "ipspoofchk": true, and always with
// networkPolicy.
func (n *NetConf) SourceCheck() bool {
	return n.NetworkPolicy || (n.IPSpoofChk != nil && *n.IPSpoofChk)
}

// String describes the config for logs.
func (n *NetConf) String() string {
	return fmt.Sprintf("network %s (bridge %s, ipam %s)", n.Name, n.Bridge, n.IPAM.Type)
}
