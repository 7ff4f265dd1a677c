package bridge

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// BridgeAddrs returns the addresses on the bridge, with their prefix
// lengths and including any IPv6 link-local one, for CHECK and tools. A
// missing bridge gives an error wrapping ErrNotFound. The address dump is
// filtered by the kernel to the bridge, as in EnsureBridge.
func BridgeAddrs(bridgeName string) ([]netip.Prefix, error) {
	n, err := openNode()
	if err != nil {
		return nil, fmt.Errorf("addresses of bridge %s: %w", bridgeName, err)
	}
	defer n.close()
	br, err := n.bridgeByName(bridgeName)
	if err != nil {
		return nil, err
	}
	addrs, err := n.addrsOf(br.Index, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of bridge %s: %w", bridgeName, err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.Prefix)
	}
	return out, nil
}
