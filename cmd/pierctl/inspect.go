package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/containernetworking/cni/libcni"

	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/inspect"
)

func inspectCommand() command {
	return command{
		name: "inspect", args: "CONTAINER-ID | --netns PATH | --network NAME",
		summary: "explain an attachment (or summarize a network): what was built and why",
		help: `For one attachment: the bridge and its gateway, forwarding, the veth pair
(host name and index, peer index, hairpin, MTU), the container's interface,
addresses and routes, the masquerade element, port mappings and bandwidth
the runtime asked for, and the IPAM reservation with the store holding it
— each with one line saying which part of the config put it there, and
problems where the pieces disagree.

Attachments are found in libcni's cache (--cache-dir) and by the alias
"pier:<network>:<containerID>:<ifname>" on host veths, in the namespace
pierctl runs in (the node's). The config is the cached one the ADD ran
with, else the one in --conf-dir. Give --netns to read the container's side
of an attachment the cache does not know.

With --network NAME: the network's settings, bridge, every attachment with
the pieces it has (and what is stale), pool usage per range and the
masquerade rules.`,
		setup: func(fs *flag.FlagSet) runner {
			confDir := fs.String("conf-dir", confdir.DefaultDir, "directory of network configurations")
			cacheDir := fs.String("cache-dir", libcni.CacheDir, "libcni's result cache")
			netnsPath := fs.String("netns", "", "the container's network namespace (path)")
			network := fs.String("network", "", "summarize this network, or only its attachment of CONTAINER-ID")
			ifName := fs.String("ifname", "", "only this interface")
			out := outputFlag(fs)
			source := sourceFlags(fs)
			return func(e *env, args []string) int {
				if len(args) > 1 {
					return usageError(e, "inspect", "want at most one CONTAINER-ID")
				}
				if code, ok := checkOutput(e, "inspect", *out); !ok {
					return code
				}
				src, err := source()
				if err != nil {
					return fail(e, "inspect", err)
				}
				opts := inspect.Options{ConfDir: *confDir, Leases: src,
					Cache: libcni.NewCNIConfigWithCacheDir(nil, *cacheDir, nil)}
				ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
				defer cancel()
				q := inspect.Query{NetNS: *netnsPath, Network: *network, IfName: *ifName}
				if len(args) == 1 {
					q.ContainerID = args[0]
				}
				switch {
				case q.ContainerID == "" && q.NetNS == "" && q.Network != "":
					return inspectNetwork(ctx, e, q.Network, opts, *out)
				case q.ContainerID == "" && q.NetNS == "":
					return usageError(e, "inspect", "want CONTAINER-ID, --netns PATH or --network NAME")
				}
				return inspectAttachments(ctx, e, q, opts, *out)
			}
		},
	}
}

func inspectAttachments(ctx context.Context, e *env, q inspect.Query, opts inspect.Options, out string) int {
	atts, err := inspect.Attachments(ctx, q, opts)
	if err != nil {
		return fail(e, "inspect", err)
	}
	if out == "json" {
		if err := writeJSON(e.stdout, atts); err != nil {
			return fail(e, "inspect", err)
		}
		return exitOK
	}
	for i, a := range atts {
		if i > 0 {
			fmt.Fprintln(e.stdout)
		}
		if err := inspect.WriteText(e.stdout, a); err != nil {
			return fail(e, "inspect", err)
		}
	}
	return exitOK
}

func inspectNetwork(ctx context.Context, e *env, name string, opts inspect.Options, out string) int {
	s, err := inspect.Summarize(ctx, name, opts)
	if err != nil {
		return fail(e, "inspect", err)
	}
	if out == "json" {
		err = writeJSON(e.stdout, s)
	} else {
		err = inspect.WriteNetworkText(e.stdout, s)
	}
	if err != nil {
		return fail(e, "inspect", err)
	}
	return exitOK
}
