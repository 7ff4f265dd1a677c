package bridge

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/sysctl"
)

// DisableRA makes the node ignore router advertisements on the bridge
// (accept_ra=0): a container must not give the node routes
// (CVE-2020-10749). A bridge Pier creates gets it at creation; this covers
// a bridge someone else created, as the reference does on every ADD. It
// reads the sysctl and writes only when it differs: a file read per ADD,
// no netlink request. A node without IPv6 has nothing to disable.
func DisableRA(bridgeName string) error {
	err := sysctl.Ensure("net/ipv6/conf/"+bridgeName+"/accept_ra", "0")
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("set accept_ra=0 on bridge %s: %w", bridgeName, err)
	}
	return nil
}
