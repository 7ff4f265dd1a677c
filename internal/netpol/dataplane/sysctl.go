package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// EnableBridgeNetfilter makes bridged IPv4 and IPv6 traffic pass the inet
// hooks (br_netfilter's bridge-nf-call-iptables and -ip6tables), in the
// calling thread's network namespace. procSys is where the sysctls are
// read and written: /proc/sys, or the node's /proc/sys/net mounted under
// procSys/net where /proc/sys is read-only (a container's, unless
// privileged).
//
// Why: two pods on one node talk through the bridge without being routed;
// only with these switches on do their packets reach the forward hook
// where the policy chains are, and get a conntrack entry, which is what
// lets the replies of allowed connections through. They are on by
// default and kube-proxy needs them too, but a host may have turned them
// off, and then every policy would silently stop applying between pods of
// the same node. The values are read first and written only when not 1.
func EnableBridgeNetfilter(procSys string) error {
	for _, key := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		path := procSys + "/net/bridge/" + key
		cur, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s is missing: load the br_netfilter module (modprobe br_netfilter); network policies cannot see traffic between pods of one node without it", path)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if string(bytes.TrimSpace(cur)) == "1" {
			continue
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable %s: %w", key, err)
		}
	}
	return nil
}
