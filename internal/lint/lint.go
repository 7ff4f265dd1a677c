// Package lint judges a network configuration file as `pier` would, and
// then as an operator would want it judged.
//
// Errors come only from Pier's own config code (config.LoadNetConf and
// config.LoadIPAM, through package confdir, fed the same bytes the plugin
// gets on stdin): a config lint accepts is one pier accepts, and the other
// way round. Warnings are what pier accepts but probably should not be so:
// keys pier ignores (often a typo), networks whose subnets overlap other
// networks of the config directory, and risky settings (containers with a
// default route but no masquerade; an MTU larger than the node's uplink).
package lint

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/firewall"
)

// Severity of a finding.
type Severity string

const (
	Error   Severity = "error"
	Warning Severity = "warning"
)

// Finding is one thing lint has to say.
type Finding struct {
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
}

// Uplink is the node's link to the outside: the link of its default route.
type Uplink struct {
	Name string
	MTU  int
}

// Options say what lint compares the file against.
type Options struct {
	// ConfDir holds the node's other networks, for overlap checks; empty
	// skips them.
	ConfDir string
	// Uplinks returns the links of the node's default routes (none when it
	// has none). Nil skips the MTU check.
	Uplinks func() ([]Uplink, error)
	// HostFilters returns the places of the node's own filters that drop
	// the bridge's forwarded traffic (package firewall). Nil skips the
	// check.
	HostFilters func(bridge string) ([]firewall.Place, error)
}

// Result is what lint found in one file.
type Result struct {
	File     string    `json:"file"`
	Network  string    `json:"network,omitempty"`
	Findings []Finding `json:"findings"`
}

// Counts returns the number of errors and warnings.
func (r *Result) Counts() (errs, warns int) {
	for _, f := range r.Findings {
		if f.Severity == Error {
			errs++
		} else {
			warns++
		}
	}
	return errs, warns
}

func (r *Result) add(s Severity, format string, a ...any) {
	r.Findings = append(r.Findings, Finding{Severity: s, Message: fmt.Sprintf(format, a...)})
}

// File lints the configuration file at path.
func File(path string, opts Options) *Result {
	r := &Result{File: path, Findings: []Finding{}}
	n, err := confdir.ReadFile(path)
	if err != nil {
		r.add(Error, "cannot be decoded as a network configuration: %v", err)
		return r
	}
	r.Network = n.Name
	raw, err := rawFile(path)
	if err != nil {
		r.add(Error, "%v", err)
		return r
	}
	r.checkUnknownKeys(n, raw)
	if !r.checkValid(n) {
		return r
	}
	r.checkRisks(n, opts)
	if opts.ConfDir != "" {
		r.checkOthers(n, opts.ConfDir)
	}
	return r
}

// checkValid reports what pier itself would refuse; false when the config
// is unusable and the later checks have nothing sound to look at.
func (r *Result) checkValid(n *confdir.Network) bool {
	if n.PluginIndex < 0 {
		r.add(Warning, "network %q has no plugin of type %q and no ipam of type %q: pier never reads it", n.Name, confdir.PluginType, config.IPAMType)
		return true
	}
	ok := true
	if n.ConfErr != nil {
		r.add(Error, "%s", cniMessage(n.ConfErr))
		ok = false
	}
	if n.IPAM != nil && n.IPAM.Type == config.IPAMType || n.IPAM == nil && n.IPAMErr != nil && ipamType(n) == config.IPAMType {
		if n.IPAMErr != nil {
			r.add(Error, "%s", cniMessage(n.IPAMErr))
			ok = false
		}
	}
	return ok
}

func ipamType(n *confdir.Network) string {
	return n.List.Plugins[n.PluginIndex].Network.IPAM.Type
}

// cniMessage is an error as pier reports it, with its CNI code.
func cniMessage(err error) string {
	if code := cnierr.CodeOf(err); code != 0 {
		return fmt.Sprintf("%v (pier fails with CNI error code %d)", err, code)
	}
	return err.Error()
}

// checkRisks warns about settings pier accepts that usually hurt.
func (r *Result) checkRisks(n *confdir.Network, opts Options) {
	c := n.Conf
	if c == nil {
		return
	}
	r.checkHostFilters(c, opts)
	if !c.IPMasq && r.hasDefaultRoute(n) {
		r.add(Warning, `containers get a default route but "ipMasq" is false: their traffic leaves the node with container source addresses, which the outside network usually cannot route back (set "ipMasq": true, or make sure the subnet is routed to this node)`)
	}
	if c.MTU == 0 || opts.Uplinks == nil {
		return
	}
	ups, err := opts.Uplinks()
	if err != nil {
		r.add(Warning, "cannot read the node's uplink to compare the MTU: %v", err)
		return
	}
	for _, up := range ups {
		if c.MTU > up.MTU {
			r.add(Warning, `"mtu": %d is larger than the MTU %d of the node's uplink %s (its default route): packets leaving the node get fragmented or dropped`, c.MTU, up.MTU, up.Name)
		}
	}
}

// checkHostFilters warns when the node's filters drop forwarded traffic
// and the config tells Pier to leave them alone: the containers could not
// leave the node, nor reach each other through br_netfilter. It also
// names a place Pier leaves alone although it handles the host's filters
// (a firewalld zone an operator put the bridge in), which decides what
// the bridge's containers may do instead of Pier.
func (r *Result) checkHostFilters(c *config.NetConf, opts Options) {
	if opts.HostFilters == nil {
		return
	}
	places, err := opts.HostFilters(c.Bridge)
	if err != nil {
		r.add(Warning, "cannot read the node's firewall: %v", err)
		return
	}
	for _, p := range places {
		switch {
		case !c.OpensHostFirewall():
			r.add(Warning, `the node drops forwarded traffic (%s) and "firewallBackend" is "none": the containers of bridge %s reach neither the outside nor each other unless the node's filters accept their traffic (remove the key to let Pier do it)`, p.Why, c.Bridge)
		case p.LeftAlone:
			r.add(Warning, `%s: %s (remove the bridge from that zone to let Pier put it in its zone %q, which forwards its traffic and keeps the node's services closed to it)`, p.Backend, p.Why, firewall.Zone)
		}
	}
}

func (r *Result) hasDefaultRoute(n *confdir.Network) bool {
	if n.Conf.IsDefaultGateway {
		return true
	}
	if n.IPAM == nil {
		return false
	}
	return slices.ContainsFunc(n.IPAM.Routes, func(rt *types.Route) bool {
		ones, _ := rt.Dst.Mask.Size()
		return ones == 0
	})
}

// checkOthers compares the network with the other networks of dir.
func (r *Result) checkOthers(n *confdir.Network, dir string) {
	others, _ := confdir.All(dir) // undecodable neighbours are their own lint's business
	self, _ := filepath.Abs(r.File)
	for _, o := range others {
		if abs, _ := filepath.Abs(o.File); abs == self {
			continue
		}
		if o.Name == n.Name {
			r.add(Warning, "network %q is also defined in %s; runtimes (libcni) use the first by file name, .conflist before .conf", n.Name, o.File)
			continue
		}
		for _, a := range subnets(n) {
			for _, b := range subnets(o) {
				if a.Overlaps(b) {
					r.add(Warning, "subnet %s overlaps subnet %s of network %q (%s): the same address could be given to two containers, and routes to one network capture the other's", a, b, o.Name, o.File)
				}
			}
		}
	}
}

// subnets returns the subnets of the network's IPAM ranges, whatever its
// IPAM type, when they decode.
func subnets(n *confdir.Network) []netip.Prefix {
	if n.IPAM == nil {
		return nil
	}
	var out []netip.Prefix
	for _, set := range n.IPAM.RangeSets {
		for _, rg := range set {
			if !slices.Contains(out, rg.Subnet) {
				out = append(out, rg.Subnet)
			}
		}
	}
	return out
}

// jsonKeys returns the JSON keys of struct type t, embedded structs
// included, so the known key sets follow Pier's own config types.
func jsonKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" {
			keys = append(keys, jsonKeys(f.Type)...)
			continue
		}
		if name != "" && name != "-" && f.IsExported() {
			keys = append(keys, name)
		}
	}
	return keys
}
