package nodestate

import (
	"net/netip"

	"github.com/pier-cni/pier/internal/localnet"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodelock"
)

// A bridge's route_localnet and its guard (package localnet) belong to the
// bridge, not to one attachment: on while a host port of the node leads to
// a container behind it, so that the node reaches that port at 127.0.0.1,
// and off again when none does, as found by the bridge's teardown (no
// container left) or a GC (ReleaseLocalnet reads every host port of the
// node and the bridge's routes, 1-2.5 ms, which a DEL does not pay: the
// sysctl stays on behind its guard until then, which is safe). Turning
// them on and off takes the node's lock. An ADD adds its host port elements first and reads the sysctl
// after (EnableLocalnet); a release decides under the lock, turns the
// sysctl off and then looks at the host ports again, turning it back on if
// one appeared (ReleaseLocalnet). So an ADD that read "on" just before a
// release turned it off has its elements seen by that last look.

// EnableLocalnet turns route_localnet on for the bridge, behind its guard.
// When it is on already it costs one read of the sysctl: Pier turns it on
// only behind the guard. (A Pier before the guard turned it on alone;
// VerifyLocalnet, which CHECK, GC, slow ADDs and pierd run, adds the guard
// then. Looking for the guard here too would cost every ADD with a host
// port about 0.4 ms, a dump of the bridge's filters.)
func EnableLocalnet(lock, bridge string) error {
	if on, err := localnet.Enabled(bridge); err != nil || on {
		return err
	}
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return err
	}
	defer unlock()
	return localnet.Enable(bridge)
}

// VerifyLocalnet puts the guard back on a bridge whose route_localnet is
// on without it: set by a Pier before the guard, or the guard removed by
// hand. It reports whether it did.
func VerifyLocalnet(lock, bridge string) (bool, error) {
	if on, err := localnet.Enabled(bridge); err != nil || !on {
		return false, err
	}
	if ok, err := localnet.Present(bridge); err != nil || ok {
		return false, err
	}
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return false, err
	}
	defer unlock()
	return true, localnet.Ensure(bridge)
}

// ReleaseLocalnet turns route_localnet off, and takes the guard away, when
// no host port of the node leads to a container behind the bridge any
// more. It reports whether it did.
func ReleaseLocalnet(lock, bridge string) (bool, error) {
	if on, err := localnet.Enabled(bridge); err != nil || !on {
		return false, err
	}
	unlock, err := nodelock.Acquire(lock)
	if err != nil {
		return false, err
	}
	defer unlock()
	if used, err := hostPortsBehind(bridge); err != nil || used {
		return false, err
	}
	if err := localnet.Disable(bridge); err != nil {
		return false, err
	}
	if used, err := hostPortsBehind(bridge); err != nil || used {
		// An ADD mapped a port meanwhile, and may have read the sysctl
		// before it went off.
		if err == nil {
			err = localnet.Enable(bridge)
		}
		return false, err
	}
	return true, nil
}

// hostPortsBehind reports whether an IPv4 host port of the node leads to
// an address the node routes out of the bridge.
func hostPortsBehind(bridge string) (bool, error) {
	all, err := nat.ListNodeElements()
	if err != nil {
		return false, err
	}
	var addrs []netip.Addr
	for _, p := range all.Ports {
		if p.ContainerIP.Is4() {
			addrs = append(addrs, p.ContainerIP)
		}
	}
	return localnet.Routed(bridge, addrs)
}
