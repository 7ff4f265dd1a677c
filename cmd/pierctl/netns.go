package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/containernetworking/cni/libcni"
)

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/var/run/netns"

func netnsCommand() command {
	return command{
		name: "netns", args: "add NAME | del NAME... | list",
		summary: "create, delete and list named network namespaces to attach",
		help: `Thin helpers over iproute2 ('ip netns'): add creates /var/run/netns/NAME
and brings its loopback up, ready for 'pierctl add NETWORK
/var/run/netns/NAME'; del removes namespaces (their interfaces go with
them, so DEL them first to release their addresses); list shows each named
namespace with the attachments libcni's cache (--cache-dir) records for it.`,
		setup: func(fs *flag.FlagSet) runner {
			cacheDir := fs.String("cache-dir", libcni.CacheDir, "libcni's result cache, for list")
			return func(e *env, args []string) int {
				if len(args) == 0 {
					return usageError(e, "netns", "want add, del or list")
				}
				switch verb, rest := args[0], args[1:]; {
				case verb == "add" && len(rest) == 1:
					return netnsAdd(e, rest[0])
				case verb == "del" && len(rest) > 0:
					return netnsDel(e, rest)
				case verb == "list" && len(rest) == 0:
					return netnsList(e, *cacheDir)
				}
				return usageError(e, "netns", "want 'add NAME', 'del NAME...' or 'list'")
			}
		},
	}
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func netnsAdd(e *env, name string) int {
	if err := ipCmd("netns", "add", name); err != nil {
		return fail(e, "netns", err)
	}
	if err := ipCmd("netns", "exec", name, "ip", "link", "set", "lo", "up"); err != nil {
		if derr := ipCmd("netns", "del", name); derr != nil {
			fmt.Fprintf(e.stderr, "pierctl netns: and removing it again: %v\n", derr)
		}
		return fail(e, "netns", err)
	}
	fmt.Fprintln(e.stdout, filepath.Join(netnsDir, name))
	return exitOK
}

func netnsDel(e *env, names []string) int {
	code := exitOK
	for _, n := range names {
		if err := ipCmd("netns", "del", n); err != nil {
			fmt.Fprintf(e.stderr, "pierctl netns: %v\n", err)
			code = exitError
		}
	}
	return code
}

func netnsList(e *env, cacheDir string) int {
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		return fail(e, "netns", err)
	}
	byNS := map[string][]string{}
	cached, err := libcni.NewCNIConfigWithCacheDir(nil, cacheDir, nil).GetCachedAttachments("")
	if err != nil {
		fmt.Fprintf(e.stderr, "pierctl netns: libcni cache %s: %v\n", cacheDir, err)
	}
	for _, a := range cached {
		byNS[a.NetNS] = append(byNS[a.NetNS], fmt.Sprintf("%s:%s/%s", a.Network, a.ContainerID, a.IfName))
	}
	names := make([]string, 0, len(entries))
	for _, en := range entries {
		names = append(names, en.Name())
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPATH\tATTACHMENTS (network:container/ifname, from libcni's cache)")
	for _, n := range names {
		p := filepath.Join(netnsDir, n)
		fmt.Fprintf(tw, "%s\t%s\t%s\n", n, p, dash(strings.Join(byNS[p], " ")))
	}
	if err := tw.Flush(); err != nil {
		return fail(e, "netns", err)
	}
	return exitOK
}
