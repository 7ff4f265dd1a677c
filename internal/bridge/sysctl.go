package bridge

import (
	"bytes"
	"fmt"
	"os"
)

// EnableForwarding turns on IPv4 and/or IPv6 forwarding in the caller's
// namespace (the node). Each value is read first and written only when it
// is not already 1: every ADD with a gateway calls this, and after the first
// one on a node the read is all it costs. Writing ip_forward also resets
// some per-interface settings, another reason not to write it needlessly.
func EnableForwarding(v4, v6 bool) error {
	if v4 {
		if err := writeSysctlIfNot("net/ipv4/ip_forward", "1"); err != nil {
			return fmt.Errorf("enable ipv4 forwarding: %w", err)
		}
	}
	if v6 {
		if err := writeSysctlIfNot("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return fmt.Errorf("enable ipv6 forwarding: %w", err)
		}
	}
	return nil
}

// writeSysctlIfNot sets /proc/sys/<key> to val unless it already holds val.
// Keys use "/" as separator so interface names with dots need no escaping.
// It acts on the namespace of the calling thread.
func writeSysctlIfNot(key, val string) error {
	path := "/proc/sys/" + key
	cur, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if string(bytes.TrimSpace(cur)) == val {
		return nil
	}
	return os.WriteFile(path, []byte(val), 0o644)
}
