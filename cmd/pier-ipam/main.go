// Command pier-ipam is Pier's IPAM plugin for any main plugin
// ("ipam": {"type": "pier-ipam"}): host-local's config, a crash-safe store.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/pier-cni/pier/internal/ipam/ipamcni"
)

func main() {
	skel.PluginMainFuncs(ipamcni.Funcs(), version.All, "pier-ipam: Pier's local IPAM plugin (host-local compatible)")
}
