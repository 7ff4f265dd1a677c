// Command pier-ipam is Pier's IPAM plugin for any main plugin
// ("ipam": {"type": "pier-ipam"}): host-local's config, a crash-safe store.
package main

import (
	"github.com/pier-cni/pier/internal/cnimain"
	"github.com/pier-cni/pier/internal/ipam/ipamcni"
)

func main() {
	cnimain.Run(ipamcni.Funcs(), "pier-ipam: Pier's local IPAM plugin (host-local compatible)")
}
