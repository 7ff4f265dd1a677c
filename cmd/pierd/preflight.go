package main

import (
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/localnet"
)

// preflight says what pierd cannot do on this node with the privileges
// and mounts it was given, before it starts and fails at each attempt:
// in a container (the DaemonSet) the runtime drops capabilities and
// mounts /proc/sys read-only unless told otherwise, and the failures
// would otherwise show only later, as errors of the netfilter watcher or
// of a route reconcile, far from their cause. procSys is --proc-sys.
// Each entry says what pierd cannot do, why, what that costs and how to
// give it (to follow "pierd cannot ").
func preflight(procSys string) []string {
	var out []string
	if !hasCap(unix.CAP_NET_ADMIN) {
		out = append(out, "program routes, the vxlan device or Pier's nftables table: no CAP_NET_ADMIN (grant NET_ADMIN)")
	}
	if err := localnet.Loadable(); err != nil {
		out = append(out, fmt.Sprintf("%v: after a flush, a bridge whose route_localnet is on stays without its guard "+
			"until the plugin's next CHECK, GC or slow ADD (grant BPF with NET_ADMIN; SYS_ADMIN on kernels before 5.8)", err))
	}
	path := procSys + "/net/ipv4/ip_forward"
	if err := unix.Faccessat(unix.AT_FDCWD, path, unix.W_OK, unix.AT_EACCESS); err != nil {
		why := fmt.Sprintf("write sysctls under %s: %v: bridge-nf-call-iptables and -ip6tables stay as they are, and "+
			"--network-policy cannot start when they are off", procSys, err)
		if errors.Is(err, unix.EROFS) {
			why += " (a container's /proc/sys is read-only: mount the host's /proc/sys/net elsewhere, writable, and pass --proc-sys)"
		}
		out = append(out, why)
	}
	return out
}

// hasCap reports whether the process holds capability c in its effective
// set.
func hasCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// reportPreflight logs what preflight found.
func reportPreflight(procSys string, log *slog.Logger) {
	for _, p := range preflight(procSys) {
		log.Warn("pierd cannot " + p)
	}
}
