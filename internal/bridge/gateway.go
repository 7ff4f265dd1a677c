package bridge

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
)

// ensureGateway makes gw an address of the bridge. An address already on
// the bridge whose subnet overlaps gw's but which is not gw itself is a
// conflict: an error naming both, or, with force, replaced by gw.
// Kernel-generated IPv6 link-local addresses are never conflicts.
//
// IPv6 gateways are added with IFA_F_NODAD so they are usable at once;
// duplicate detection for an address Pier assigns from its own pool would
// only delay the first container's traffic by a second or more.
func ensureGateway(n *node, br *netlink.Bridge, gw netip.Prefix, force bool) error {
	have, err := n.addrsOf(br.Index, links.FamilyOf(gw.Addr()))
	if err != nil {
		return fmt.Errorf("read addresses of bridge %s: %w", br.Name, err)
	}
	for _, a := range have {
		if a.Prefix == gw {
			return nil
		}
	}
	for _, a := range have {
		if a.Prefix.Addr().IsLinkLocalUnicast() || !a.Prefix.Overlaps(gw) {
			continue
		}
		if !force {
			return fmt.Errorf("bridge %s already has address %s in the subnet of gateway %s (set forceAddress to replace it)", br.Name, a.Prefix, gw)
		}
		if err := n.h.AddrDel(br, &netlink.Addr{IPNet: links.IPNet(a.Prefix)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove address %s from bridge %s: %w", a.Prefix, br.Name, err)
		}
	}
	addr := &netlink.Addr{IPNet: links.IPNet(gw)}
	if gw.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	err = n.h.AddrAdd(br, addr)
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		// EEXIST: a concurrent plugin process added it meanwhile.
		return nil
	case errors.Is(err, unix.EACCES) && gw.Addr().Is6():
		// The node's policy, not ours to override: say where it is set.
		return fmt.Errorf("add gateway %s to bridge %s: %w (IPv6 is disabled: net.ipv6.conf.%s.disable_ipv6)", gw, br.Name, err, br.Name)
	default:
		return fmt.Errorf("add gateway %s to bridge %s: %w", gw, br.Name, err)
	}
}

// Addrs returns the addresses on the bridge, with their prefix
// lengths and including any IPv6 link-local one, for CHECK and tools. A
// missing bridge gives an error wrapping ErrNotFound. The address dump is
// filtered by the kernel to the bridge, as in Ensure.
func Addrs(bridgeName string) ([]netip.Prefix, error) {
	n, err := openNode()
	if err != nil {
		return nil, fmt.Errorf("addresses of bridge %s: %w", bridgeName, err)
	}
	defer n.close()
	br, err := byName(n, bridgeName)
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
