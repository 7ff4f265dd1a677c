// Package sysctl reads and writes the network sysctls an attachment needs,
// under /proc/sys of the calling thread's network namespace: forwarding in
// the node, and per-interface switches (IPv6 off on the node's host-side
// links). Values are read before they are written, because every ADD asks
// and after the first one on a node the read is all it costs.
package sysctl

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// EnableForwarding turns on IPv4 and/or IPv6 forwarding in the caller's
// namespace (the node). Each value is read first and written only when it
// is not already 1: every ADD with a gateway calls this, and after the first
// one on a node the read is all it costs. Writing ip_forward also resets
// some per-interface settings, another reason not to write it needlessly.
func EnableForwarding(v4, v6 bool) error {
	if v4 {
		if err := Ensure("net/ipv4/ip_forward", "1"); err != nil {
			return fmt.Errorf("enable ipv4 forwarding: %w", err)
		}
	}
	if v6 {
		if err := Ensure("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return fmt.Errorf("enable ipv6 forwarding: %w", err)
		}
	}
	return nil
}

// Ensure sets /proc/sys/<key> to val unless it already holds val.
// Keys use "/" as separator so interface names with dots need no escaping.
// It acts on the namespace of the calling thread.
func Ensure(key, val string) error {
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

// DisableIPv6 turns IPv6 off on a link of the caller's namespace. A node
// without IPv6 (no /proc/sys/net/ipv6) has nothing to turn off. The link is
// new, so its values are the defaults and are written without reading them.
//
// accept_ra=0 first, as the reference does for its host veths: with IPv6
// off it changes nothing today, but whoever turns IPv6 back on for every
// interface (net.ipv6.conf.all.disable_ipv6=0 does) must not find the
// node's bridge ports taking routes from a container's router
// advertisement (CVE-2020-10749).
func DisableIPv6(name string) error {
	for _, kv := range [][2]string{{"accept_ra", "0"}, {"disable_ipv6", "1"}} {
		err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/"+kv[0], []byte(kv[1]), 0o644)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("set %s=%s on %s: %w", kv[0], kv[1], name, err)
		}
	}
	return nil
}
