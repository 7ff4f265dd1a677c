package container

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/links"
)

// dadTimeout bounds waitDAD. The kernel starts DAD after a random delay of
// up to rtr_solicit_delay (1 s by default) and then sends dad_transmits
// probes retrans_time apart (1 × 1 s by default), so DAD normally ends
// within 2 s; 5 s leaves room for a busy node without hanging the runtime.
const dadTimeout = 5 * time.Second

// waitDAD polls until none of want's IPv6 addresses is tentative on link,
// failing at once if one is a duplicate (IFA_F_DADFAILED) and after timeout
// otherwise. The poll interval starts at 10 ms and doubles up to 200 ms:
// quick when DAD is already done, at most ~10 polls for a typical 2 s DAD.
// Each poll is an address dump of the container namespace, which holds a
// few addresses, filtered here to the link; DAD is opt-in, so this is off
// the default path.
func (c *handle) waitDAD(link netlink.Link, want []netip.Prefix, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		pending, err := c.tentative(link, want)
		if err != nil || len(pending) == 0 {
			return err
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%s in %s: addresses %v still tentative (duplicate address detection) after %s", link.Attrs().Name, c.path, pending, timeout)
		}
		time.Sleep(wait)
	}
}

// tentative returns which of want's IPv6 addresses are still tentative on
// link, or an error if DAD found one of them duplicated.
func (c *handle) tentative(link netlink.Link, want []netip.Prefix) ([]netip.Prefix, error) {
	have, err := c.h.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return nil, fmt.Errorf("read addresses of %s in %s: %w", link.Attrs().Name, c.path, err)
	}
	var pending []netip.Prefix
	for _, a := range have {
		p, ok := links.PrefixOf(a)
		if !ok || !contains(want, p) {
			continue
		}
		if a.Flags&unix.IFA_F_DADFAILED != 0 {
			return nil, fmt.Errorf("%s in %s: address %s is in use by another host (duplicate address detection failed)", link.Attrs().Name, c.path, p)
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			pending = append(pending, p)
		}
	}
	return pending, nil
}

func contains(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}
