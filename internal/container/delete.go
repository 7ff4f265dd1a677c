package container

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/pier-cni/pier/internal/links"
)

// DeleteLink deletes ifName inside the container (which removes
// the whole pair) and returns the addresses it had, without IPv6
// link-local ones, so the caller can release them.
//
// DEL policy for the link: a namespace that is gone (or is no longer a
// namespace) and a link that is gone mean the work is done, so both return
// (nil, nil); the runtime may call DEL any number of times. Only real
// failures to read or delete are returned.
func DeleteLink(netnsPath, ifName string) ([]netip.Prefix, error) {
	c, err := open(netnsPath)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", ifName, err)
	}
	defer c.close()
	link, err := c.link(ifName)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", ifName, err)
	}
	addrs, err := c.addrs(link)
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", ifName, err)
	}
	if err := c.h.LinkDel(link); err != nil && !links.IsNotExist(err) {
		return nil, fmt.Errorf("delete %s in %s: %w", ifName, netnsPath, err)
	}
	return addrs, nil
}
