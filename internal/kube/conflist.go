package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/pier-cni/pier/internal/config"
)

// CNIConfig is the conflist pierd writes for the runtime once the node's
// pod ranges are known.
type CNIConfig struct {
	// Dir and File: where (default /etc/cni/net.d, 10-pier.conflist).
	Dir, File string
	// Network is the CNI network name (default "pier"); Bridge the bridge
	// (default pier0).
	Network, Bridge string
	// MTU of the pods' interfaces: the underlay's, less the vxlan overhead.
	MTU int
	// IPMasq masquerades traffic leaving the cluster; NonMasquerade are the
	// cluster's pod CIDRs, exempt from it.
	IPMasq        bool
	NonMasquerade []netip.Prefix
	// DataDir is the embedded IPAM store's directory; DaemonSocket, when
	// set, makes the plugins allocate through pierd instead (daemon mode).
	DataDir, DaemonSocket string
	// NetworkPolicy holds the pods to the cluster's NetworkPolicies
	// ("networkPolicy": true), which this pierd enforces.
	NetworkPolicy bool
}

// Defaults of CNIConfig.
const (
	DefaultCNIDir      = "/etc/cni/net.d"
	DefaultCNIFile     = "10-pier.conflist"
	DefaultNetworkName = "pier"
)

func (c *CNIConfig) defaults() {
	if c.Dir == "" {
		c.Dir = DefaultCNIDir
	}
	if c.File == "" {
		c.File = DefaultCNIFile
	}
	if c.Network == "" {
		c.Network = DefaultNetworkName
	}
	if c.Bridge == "" {
		c.Bridge = config.DefaultBridge
	}
}

// Path is where the conflist goes.
func (c CNIConfig) Path() string {
	c.defaults()
	return filepath.Join(c.Dir, c.File)
}

type conflist struct {
	CNIVersion  string       `json:"cniVersion"`
	CNIVersions []string     `json:"cniVersions"`
	Name        string       `json:"name"`
	Plugins     []pierPlugin `json:"plugins"`
}

// The conflist's versions: runtimes whose libcni knows the cniVersions
// list (spec 1.1) take the highest they support, so GC and STATUS reach
// Pier; older ones (containerd 1.6 and 1.7 refuse a 1.1.0 result) read
// cniVersion.
const (
	cniVersion    = "1.0.0"
	cniVersionMax = "1.1.0"
)

type pierPlugin struct {
	Type               string          `json:"type"`
	Bridge             string          `json:"bridge"`
	IsGateway          bool            `json:"isGateway"`
	IPMasq             bool            `json:"ipMasq"`
	NonMasqueradeCIDRs []string        `json:"nonMasqueradeCIDRs,omitempty"`
	MTU                int             `json:"mtu,omitempty"`
	HairpinMode        bool            `json:"hairpinMode"`
	NetworkPolicy      bool            `json:"networkPolicy,omitempty"`
	IPAM               ipamSection     `json:"ipam"`
	Capabilities       map[string]bool `json:"capabilities"`
}

type ipamSection struct {
	Type         string                `json:"type"`
	Ranges       [][]map[string]string `json:"ranges"`
	Routes       []map[string]string   `json:"routes"`
	DataDir      string                `json:"dataDir,omitempty"`
	DaemonSocket string                `json:"daemonSocket,omitempty"`
}

// Render returns the conflist for the node's pod ranges: one range set per
// family (dual stack when the node has both), the gateway on the bridge,
// a default route per family, hairpin (a pod reaching itself through its
// Service), the capabilities kubelet's hostPort and bandwidth
// annotations need, and networkPolicy when pierd enforces policies. The result is checked with the plugin's own parser.
func (c CNIConfig) Render(ranges []netip.Prefix) ([]byte, error) {
	c.defaults()
	if len(ranges) == 0 {
		return nil, errors.New("no pod range")
	}
	p := pierPlugin{
		Type: "pier", Bridge: c.Bridge, IsGateway: true, IPMasq: c.IPMasq, MTU: c.MTU, HairpinMode: true, NetworkPolicy: c.NetworkPolicy,
		IPAM:         ipamSection{Type: "pier-ipam", DataDir: c.DataDir, DaemonSocket: c.DaemonSocket},
		Capabilities: map[string]bool{"portMappings": true, "bandwidth": true},
	}
	if c.DaemonSocket != "" {
		p.IPAM.DataDir = "" // pierd's own data dir serves daemon mode
	}
	for _, x := range c.NonMasquerade {
		p.NonMasqueradeCIDRs = append(p.NonMasqueradeCIDRs, x.String())
	}
	for _, r := range ranges {
		p.IPAM.Ranges = append(p.IPAM.Ranges, []map[string]string{{"subnet": r.Masked().String()}})
		dst := "0.0.0.0/0"
		if r.Addr().Is6() {
			dst = "::/0"
		}
		p.IPAM.Routes = append(p.IPAM.Routes, map[string]string{"dst": dst})
	}
	b, err := json.MarshalIndent(conflist{CNIVersion: cniVersion, CNIVersions: []string{cniVersion, cniVersionMax},
		Name: c.Network, Plugins: []pierPlugin{p}}, "", "  ")
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	// The plugin sees each plugin of the list with the list's name and
	// version: check that form, as it will be read.
	one, err := json.Marshal(struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		pierPlugin
	}{cniVersionMax, c.Network, p})
	if err != nil {
		return nil, err
	}
	if _, err := config.LoadNetConf(one, ""); err != nil {
		return nil, fmt.Errorf("the conflist would be refused by the plugin: %w", err)
	}
	if _, err := config.LoadIPAM(one, ""); err != nil {
		return nil, fmt.Errorf("the conflist's ipam would be refused by the plugin: %w", err)
	}
	return b, nil
}

// Write renders the conflist and puts it in place atomically (temp file
// and rename in the same directory: a runtime never reads half a file),
// unless the file already holds exactly that. It reports whether it wrote.
func (c CNIConfig) Write(ranges []netip.Prefix) (bool, error) {
	b, err := c.Render(ranges)
	if err != nil {
		return false, err
	}
	path := c.Path()
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}
