// Package confdir finds and decodes network configurations the way a runtime
// does (libcni), for pierctl. It hands Pier's own config code
// (config.LoadNetConf, config.LoadIPAM) exactly the bytes a plugin would get
// on stdin, so every judgement of a value stays in package config.
package confdir

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"

	"github.com/containernetworking/cni/libcni"

	"github.com/pier-cni/pier/internal/config"
)

// DefaultDir is where runtimes read network configurations from.
const DefaultDir = "/etc/cni/net.d"

// PluginType is the main plugin's "type".
const PluginType = "pier"

// Network is one network configuration file, decoded.
type Network struct {
	Name string
	File string // empty when the config came from elsewhere (the libcni cache)
	List *libcni.NetworkConfigList
	// PluginIndex is the index in List.Plugins of the plugin Pier serves:
	// the first of type "pier", else the first whose ipam.type is
	// "pier-ipam"; -1 when there is none.
	PluginIndex int
	// Stdin is what that plugin gets on stdin (name and cniVersion
	// injected as libcni does), without runtimeConfig or prevResult; for a
	// network Pier does not serve, the first plugin's with an ipam section.
	Stdin []byte
	// Conf is set when the plugin is of type pier and its config is valid.
	Conf *config.NetConf
	// IPAM is set when the plugin's IPAM config decodes (any ipam.type
	// using host-local's range keys decodes; Type says which it is). For a
	// network Pier does not serve it is the first plugin's with an ipam
	// section, so tools can still compare subnets.
	IPAM *config.IPAMConfig
	// ConfErr and IPAMErr are what config.LoadNetConf and config.LoadIPAM
	// said, exactly as the plugin would fail.
	ConfErr, IPAMErr error
}

// Files lists the configuration files of dir in the order libcni reads them.
func Files(dir string) ([]string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	sort.Strings(files)
	return files, nil
}

// Load finds network name in dir as libcni.LoadNetworkConf does.
func Load(dir, name string) (*Network, error) {
	list, err := libcni.LoadNetworkConf(dir, name)
	if err != nil {
		return nil, fmt.Errorf("network %q in %s: %w", name, dir, err)
	}
	n := FromList(list)
	n.File = findFile(dir, name)
	return n, nil
}

// findFile returns the file libcni took name from, for messages only.
func findFile(dir, name string) string {
	files, _ := Files(dir) // the directory was just read by libcni
	for _, ext := range []string{".conflist", ".conf", ".json"} {
		for _, f := range files {
			if filepath.Ext(f) != ext {
				continue
			}
			if n, err := ReadFile(f); err == nil && n.Name == name {
				return f
			}
		}
	}
	return ""
}

// ReadFile decodes one file, a .conflist or a single-plugin .conf/.json.
func ReadFile(path string) (*Network, error) {
	var list *libcni.NetworkConfigList
	var err error
	if filepath.Ext(path) == ".conflist" {
		list, err = libcni.NetworkConfFromFile(path)
	} else {
		var single *libcni.PluginConfig
		if single, err = libcni.ConfFromFile(path); err == nil {
			list, err = libcni.ConfListFromConf(single)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	n := FromList(list)
	n.File = path
	return n, nil
}

// FromBytes decodes a config given as bytes: a list (with "plugins") or a
// single plugin's config.
func FromBytes(b []byte) (*Network, error) {
	var probe struct {
		Plugins json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("decode network configuration: %w", err)
	}
	if probe.Plugins != nil {
		list, err := libcni.NetworkConfFromBytes(b)
		if err != nil {
			return nil, err
		}
		return FromList(list), nil
	}
	single, err := libcni.ConfFromBytes(b)
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromConf(single)
	if err != nil {
		return nil, err
	}
	return FromList(list), nil
}

// FromList decodes the Pier part of a configuration list.
func FromList(list *libcni.NetworkConfigList) *Network {
	n := &Network{Name: list.Name, List: list, PluginIndex: pierPlugin(list)}
	idx := n.PluginIndex
	if idx < 0 {
		idx = slices.IndexFunc(list.Plugins, func(p *libcni.PluginConfig) bool { return p.Network.IPAM.Type != "" })
		if idx < 0 {
			return n
		}
	}
	p, err := libcni.InjectConf(list.Plugins[idx], map[string]any{
		"name": list.Name, "cniVersion": list.CNIVersion,
	})
	if err != nil {
		n.ConfErr = err
		return n
	}
	n.Stdin = p.Bytes
	if n.PluginIndex < 0 {
		n.IPAM, _ = config.LoadIPAM(p.Bytes, "") // best effort: not Pier's to judge
		return n
	}
	if p.Network.Type == PluginType {
		n.Conf, n.ConfErr = config.LoadNetConf(n.Stdin, "")
	}
	if p.Network.IPAM.Type != "" {
		n.IPAM, n.IPAMErr = config.LoadIPAM(n.Stdin, "")
	}
	return n
}

func pierPlugin(list *libcni.NetworkConfigList) int {
	if i := slices.IndexFunc(list.Plugins, func(p *libcni.PluginConfig) bool { return p.Network.Type == PluginType }); i >= 0 {
		return i
	}
	return slices.IndexFunc(list.Plugins, func(p *libcni.PluginConfig) bool { return p.Network.IPAM.Type == config.IPAMType })
}

// PierIPAM returns the network's IPAM config when Pier's allocator serves
// it, or an error saying why not.
func (n *Network) PierIPAM() (*config.IPAMConfig, error) {
	switch {
	case n.PluginIndex < 0:
		return nil, fmt.Errorf("network %q has no plugin of type %q and no ipam of type %q", n.Name, PluginType, config.IPAMType)
	case n.IPAMErr != nil:
		return nil, n.IPAMErr
	case n.IPAM == nil || n.IPAM.Type != config.IPAMType:
		t := ""
		if n.IPAM != nil {
			t = n.IPAM.Type
		}
		return nil, fmt.Errorf("network %q: ipam type is %q, not %q: its addresses are not in Pier's store", n.Name, t, config.IPAMType)
	}
	return n.IPAM, nil
}

// All decodes every file of dir. Files that cannot be decoded are returned
// as errors beside the networks that could.
func All(dir string) ([]*Network, []error) {
	files, err := Files(dir)
	if err != nil {
		return nil, []error{err}
	}
	var nets []*Network
	var errs []error
	for _, f := range files {
		n, err := ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		nets = append(nets, n)
	}
	return nets, errs
}

// ErrNotFound reports whether err says the network is not configured.
func ErrNotFound(err error) bool {
	var nf libcni.NotFoundError
	var none libcni.NoConfigsFoundError
	return errors.As(err, &nf) || errors.As(err, &none)
}
