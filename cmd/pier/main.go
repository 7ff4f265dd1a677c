// Command pier is the CNI plugin "type": "pier": a bridge, a veth pair per
// container, addresses from Pier's IPAM, routes, and masquerade in nftables.
package main

import (
	"runtime"

	"github.com/pier-cni/pier/internal/cnimain"
	"github.com/pier-cni/pier/internal/plugin"
)

func init() {
	// Namespace switches are per thread: keep main on the thread-group
	// leader so a switch never leaks into another goroutine's work.
	runtime.LockOSThread()
}

func main() {
	cnimain.Run(plugin.New().Funcs(), "pier: Pier CNI bridge plugin")
}
