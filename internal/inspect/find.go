// Package inspect gathers everything Pier built for one attachment, or for
// one network, from the places it lives — the kernel (bridge, veth pair,
// container interface, routes, qdiscs), nftables (masquerade elements), the
// IPAM store and libcni's result cache — and says, for each piece, why it is
// there in terms of the network's config.
//
// It reads only, and acts on the network namespace it runs in, which for
// pierctl is the node's (the container's side is read through its netns
// path). Attachments are found in libcni's cache and through the alias
// "pier:<network>:<containerID>:<ifname>" that ADD writes on the host veth,
// so an attachment made by a runtime with another cache is found too.
package inspect

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/pier-cni/pier/internal/leases"
	"github.com/pier-cni/pier/internal/netns"
)

// Options say where inspect looks besides the kernel.
type Options struct {
	// ConfDir holds network configs, used when the cache has none.
	ConfDir string
	// Cache reads libcni's result cache (its Path is not used); nil skips
	// the cache.
	Cache *libcni.CNIConfig
	// Leases reads IPAM reservations.
	Leases leases.Source
}

// Query selects attachments: by container ID, by netns path, or both;
// Network and IfName narrow the match.
type Query struct {
	ContainerID, NetNS, Network, IfName string
}

// found is an attachment located but not yet inspected.
type found struct {
	network, containerID, ifName, netns string
	from                                []string
	cached                              *libcni.NetworkAttachment
}

func (f *found) key() string { return f.network + "\x00" + f.containerID + "\x00" + f.ifName }

// aliasPrefix starts the alias ADD writes on every host veth.
const aliasPrefix = "pier:"

// parseAlias splits "pier:<network>:<containerID>:<ifname>". Network names
// and container IDs cannot hold ':' and interface names cannot either.
func parseAlias(alias string) (network, containerID, ifName string, ok bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return "", "", "", false
	}
	parts := strings.SplitN(rest, ":", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// locate finds the attachments q selects.
func locate(q Query, opts Options) ([]*found, error) {
	if q.NetNS != "" {
		abs, err := filepath.Abs(q.NetNS)
		if err != nil {
			return nil, err
		}
		q.NetNS = abs
	}
	byKey := map[string]*found{}
	var order []*found
	add := func(f *found, from string) {
		if q.Network != "" && f.network != q.Network || q.IfName != "" && f.ifName != q.IfName ||
			q.ContainerID != "" && f.containerID != q.ContainerID {
			return
		}
		if have, ok := byKey[f.key()]; ok {
			have.from = append(have.from, from)
			if have.netns == "" {
				have.netns = f.netns
			}
			if have.cached == nil {
				have.cached = f.cached
			}
			return
		}
		f.from = []string{from}
		byKey[f.key()] = f
		order = append(order, f)
	}
	if opts.Cache != nil {
		cached, err := opts.Cache.GetCachedAttachments(q.ContainerID)
		if err != nil {
			return nil, fmt.Errorf("read libcni's cache: %w", err)
		}
		for _, a := range cached {
			if q.NetNS != "" && filepath.Clean(a.NetNS) != q.NetNS {
				continue
			}
			add(&found{network: a.Network, containerID: a.ContainerID, ifName: a.IfName, netns: a.NetNS, cached: a}, "libcni cache")
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	peers, err := peersIn(q.NetNS)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		network, cid, ifName, ok := parseAlias(l.Attrs().Alias)
		if !ok {
			continue
		}
		f := &found{network: network, containerID: cid, ifName: ifName}
		if q.NetNS != "" {
			// Only the veths whose peer is in the given namespace.
			if !slices.ContainsFunc(peers, func(p peer) bool { return p.index == l.Attrs().ParentIndex && p.peerIndex == l.Attrs().Index }) {
				continue
			}
			f.netns = q.NetNS
		}
		add(f, "host veth alias")
	}
	for _, f := range order {
		if f.netns == "" && q.NetNS != "" {
			f.netns = q.NetNS
		}
	}
	return order, nil
}

type peer struct{ index, peerIndex int }

// peersIn lists the veths of the namespace at path with their peer's index
// (IFLA_LINK); nothing when path is empty.
func peersIn(path string) ([]peer, error) {
	if path == "" {
		return nil, nil
	}
	h, err := netns.Open(path)
	if err != nil {
		return nil, err
	}
	defer h.Close() //nolint:errcheck // read-only handle
	nh, err := netlink.NewHandleAt(vnetns.NsHandle(h.Fd()))
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer nh.Close()
	links, err := nh.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", path, err)
	}
	var out []peer
	for _, l := range links {
		if l.Type() == "veth" {
			out = append(out, peer{index: l.Attrs().Index, peerIndex: l.Attrs().ParentIndex})
		}
	}
	return out, nil
}
