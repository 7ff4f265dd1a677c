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

// EnableRouteLocalnet sets route_localnet=1 on the bridge, so that a
// connection the node makes to 127.0.0.1:<host port>, DNATed to a
// container, may leave through the bridge (its source is masqueraded on the
// way out). Without it the kernel drops packets from 127.0.0.0/8 that are
// routed off the loopback device. The nftables rule that drops packets to
// 127.0.0.0/8 arriving from outside the node comes with the port mappings
// (internal/nat), since this sysctl would otherwise let a container reach
// the node's loopback services.
func EnableRouteLocalnet(bridgeName string) error {
	if err := sysctl.Ensure("net/ipv4/conf/"+bridgeName+"/route_localnet", "1"); err != nil {
		return fmt.Errorf("set route_localnet=1 on bridge %s: %w", bridgeName, err)
	}
	return nil
}
