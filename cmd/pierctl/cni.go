package main

// add, del, check, gc and status: a network config run through libcni, as a
// runtime runs it, with libcni's result cache. Unlike the reference cnitool,
// gc passes the attachments still in the cache as valid, so it never takes
// a live container's network away.

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/pier-cni/pier/internal/confdir"
)

// cniTimeout bounds one libcni operation, as a runtime's CNI timeout does.
const cniTimeout = 2 * time.Minute

// cniFlags are the flags shared by the libcni commands.
type cniFlags struct {
	confDir, binDir, cacheDir string
}

func (f *cniFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.confDir, "conf-dir", confdir.DefaultDir, "directory of network configurations (.conf, .conflist, .json)")
	fs.StringVar(&f.binDir, "bin-dir", "/opt/cni/bin", "plugin directories, separated by ':' (CNI_PATH)")
	fs.StringVar(&f.cacheDir, "cache-dir", libcni.CacheDir, "libcni's result cache (runtimes share /var/lib/cni)")
}

func (f *cniFlags) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(filepath.SplitList(f.binDir), f.cacheDir, nil)
}

// attachFlags describe one attachment and what the runtime passes with it.
type attachFlags struct {
	ifName, containerID, cniArgs string
	portMappings, ips            listFlag
	mac, bandwidth               string
}

func (f *attachFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.ifName, "ifname", "eth0", "interface name inside the container (CNI_IFNAME)")
	fs.StringVar(&f.containerID, "container-id", "", "container ID (CNI_CONTAINERID; default: pierctl- and a hash of the netns path)")
	fs.StringVar(&f.cniArgs, "args", "", "CNI_ARGS, as KEY=VALUE;KEY=VALUE (for example IP=10.15.20.9)")
	fs.Var(&f.portMappings, "port-mapping", "portMappings capability: hostPort:containerPort/proto[@hostIP] (repeatable)")
	fs.Var(&f.ips, "ip", "ips capability: an address, optionally with /prefix (repeatable, or comma-separated)")
	fs.StringVar(&f.mac, "mac", "", "mac capability: the container interface's MAC address")
	fs.StringVar(&f.bandwidth, "bandwidth", "", "bandwidth capability: ingressRate=BPS,ingressBurst=BITS,egressRate=BPS,egressBurst=BITS (any subset)")
}

// listFlag is a repeatable flag whose values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func cniCommands() []command {
	const attachHelp = `Loads network NETWORK from --conf-dir as a runtime does (libcni: the first
.conflist by file name, then .conf/.json), and runs it with the plugins of
--bin-dir, in the namespace pierctl runs in (the node's). The result of an
ADD is cached in --cache-dir (results/NETWORK-CONTAINERID-IFNAME), which
DEL and CHECK use as prevResult, exactly like a runtime. Without
--container-id the ID is derived from the netns path, so add, check and
del of the same NETNS-PATH name the same attachment.`
	return []command{
		{
			name: "add", args: "NETWORK NETNS-PATH",
			summary: "attach a network namespace to a network (CNI ADD through libcni), print the result",
			help:    attachHelp,
			setup:   attachSetup("add"),
		},
		{
			name: "del", args: "NETWORK NETNS-PATH",
			summary: "detach it (CNI DEL through libcni, with the cached result)",
			help:    attachHelp + "\n\nWithout --args or capability flags, DEL reuses those cached by the ADD.",
			setup:   attachSetup("del"),
		},
		{
			name: "check", args: "NETWORK NETNS-PATH",
			summary: "verify an attachment (CNI CHECK through libcni, with the cached result)",
			help:    attachHelp,
			setup:   attachSetup("check"),
		},
		{
			name: "gc", args: "NETWORK",
			summary: "garbage-collect a network, keeping every attachment in libcni's cache",
			help: `Runs CNI GC for NETWORK through libcni. The attachments of NETWORK still
in the result cache (--cache-dir) are passed as valid
(cni.dev/valid-attachments), so a container a runtime attached is never
removed; only what no cached attachment owns (addresses, masquerade
elements, host veths of containers whose runtime lost track) is collected.
The reference cnitool passes none, which DELs every cached attachment.
GC is part of cniVersion 1.1.0; older configs have nothing to collect.`,
			setup: gcSetup,
		},
		statusCommand(),
	}
}

func attachSetup(verb string) func(fs *flag.FlagSet) runner {
	return func(fs *flag.FlagSet) runner {
		var cf cniFlags
		var af attachFlags
		cf.register(fs)
		af.register(fs)
		return func(e *env, args []string) int {
			if len(args) != 2 {
				return usageError(e, verb, "want NETWORK NETNS-PATH, got %d arguments", len(args))
			}
			rt, err := af.runtimeConf(args[1])
			if err != nil {
				return usageError(e, verb, "%v", err)
			}
			list, err := libcni.LoadNetworkConf(cf.confDir, args[0])
			if err != nil {
				return fail(e, verb, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
			defer cancel()
			return runAttach(ctx, e, verb, cf.cni(), list, rt)
		}
	}
}

func runAttach(ctx context.Context, e *env, verb string, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) int {
	if verb != "add" && len(rt.Args) == 0 && len(rt.CapabilityArgs) == 0 {
		// As runtimes do: DEL and CHECK get what the ADD got.
		if _, cached, err := cni.GetNetworkListCachedConfig(list, rt); err == nil && cached != nil {
			rt = cached
		}
	}
	var err error
	switch verb {
	case "add":
		var res types.Result
		if res, err = cni.AddNetworkList(ctx, list, rt); err == nil {
			err = printResult(e, res)
		}
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	}
	if err != nil {
		return fail(e, verb, describeCNIError(err))
	}
	return exitOK
}

func printResult(e *env, res types.Result) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "%s\n", b)
	return err
}

// describeCNIError adds the CNI error code to a plugin's error message.
func describeCNIError(err error) error {
	var ce *types.Error
	if errors.As(err, &ce) {
		return fmt.Errorf("%w (CNI error code %d)", err, ce.Code)
	}
	return err
}

// runtimeConf builds what a runtime passes for an attachment.
func (f *attachFlags) runtimeConf(netnsPath string) (*libcni.RuntimeConf, error) {
	abs, err := filepath.Abs(netnsPath)
	if err != nil {
		return nil, err
	}
	rt := &libcni.RuntimeConf{ContainerID: f.containerID, NetNS: abs, IfName: f.ifName}
	if rt.ContainerID == "" {
		rt.ContainerID = defaultContainerID(abs)
	}
	if rt.Args, err = parseCNIArgs(f.cniArgs); err != nil {
		return nil, err
	}
	if rt.CapabilityArgs, err = f.capabilityArgs(); err != nil {
		return nil, err
	}
	return rt, nil
}

// defaultContainerID is the container ID pierctl uses for a netns path when
// none is given, as cnitool does: stable, so later commands find it.
func defaultContainerID(absNetnsPath string) string {
	s := sha512.Sum512([]byte(absNetnsPath))
	return "pierctl-" + hex.EncodeToString(s[:10])
}

func parseCNIArgs(s string) ([][2]string, error) {
	var out [][2]string
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--args: %q is not KEY=VALUE", pair)
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// capabilityArgs builds the runtime's capability arguments; libcni passes
// each only to plugins whose config declares the capability.
func (f *attachFlags) capabilityArgs() (map[string]any, error) {
	caps := map[string]any{}
	if len(f.portMappings) > 0 {
		var pms []portMapping
		for _, s := range f.portMappings {
			pm, err := parsePortMapping(s)
			if err != nil {
				return nil, err
			}
			pms = append(pms, pm)
		}
		caps["portMappings"] = pms
	}
	if len(f.ips) > 0 {
		caps["ips"] = []string(f.ips)
	}
	if f.mac != "" {
		caps["mac"] = f.mac
	}
	if f.bandwidth != "" {
		bw, err := parseBandwidth(f.bandwidth)
		if err != nil {
			return nil, err
		}
		caps["bandwidth"] = bw
	}
	if len(caps) == 0 {
		return nil, nil
	}
	return caps, nil
}

// portMapping is the portMappings capability's element (CNI conventions).
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// parsePortMapping reads hostPort:containerPort/proto[@hostIP]; proto
// defaults to tcp.
func parsePortMapping(s string) (portMapping, error) {
	bad := func(why string) (portMapping, error) {
		return portMapping{}, fmt.Errorf("--port-mapping %q: %s (want hostPort:containerPort/proto[@hostIP])", s, why)
	}
	rest, hostIP, _ := strings.Cut(s, "@")
	ports, proto, hasProto := strings.Cut(rest, "/")
	if !hasProto {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return bad("protocol must be tcp, udp or sctp")
	}
	hp, cp, ok := strings.Cut(ports, ":")
	if !ok {
		return bad("no ':' between the ports")
	}
	var pm portMapping
	if _, err := fmt.Sscanf(hp, "%d", &pm.HostPort); err != nil || pm.HostPort < 1 || pm.HostPort > 65535 || fmt.Sprint(pm.HostPort) != hp {
		return bad("host port must be 1..65535")
	}
	if _, err := fmt.Sscanf(cp, "%d", &pm.ContainerPort); err != nil || pm.ContainerPort < 1 || pm.ContainerPort > 65535 || fmt.Sprint(pm.ContainerPort) != cp {
		return bad("container port must be 1..65535")
	}
	if hostIP != "" {
		a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(hostIP, "["), "]"))
		if err != nil {
			return bad("host IP is not an address")
		}
		hostIP = a.String()
	}
	pm.Protocol, pm.HostIP = proto, hostIP
	return pm, nil
}

// parseBandwidth reads the bandwidth capability as key=value pairs.
func parseBandwidth(s string) (map[string]uint64, error) {
	known := []string{"ingressRate", "ingressBurst", "egressRate", "egressBurst"}
	out := map[string]uint64{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		var n uint64
		if !ok || !slices.Contains(known, k) {
			return nil, fmt.Errorf("--bandwidth: %q: want one of %s as KEY=NUMBER", kv, strings.Join(known, ", "))
		}
		if _, err := fmt.Sscanf(v, "%d", &n); err != nil || fmt.Sprint(n) != v {
			return nil, fmt.Errorf("--bandwidth: %s=%q is not a number", k, v)
		}
		out[k] = n
	}
	return out, nil
}

func gcSetup(fs *flag.FlagSet) runner {
	var cf cniFlags
	cf.register(fs)
	return func(e *env, args []string) int {
		if len(args) != 1 {
			return usageError(e, "gc", "want NETWORK, got %d arguments", len(args))
		}
		list, err := libcni.LoadNetworkConf(cf.confDir, args[0])
		if err != nil {
			return fail(e, "gc", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
		defer cancel()
		return runGC(ctx, e, cf.cni(), list)
	}
}

func runGC(ctx context.Context, e *env, cni *libcni.CNIConfig, list *libcni.NetworkConfigList) int {
	valid, err := cachedAttachments(cni, list.Name)
	if err != nil {
		return fail(e, "gc", fmt.Errorf("read libcni's cache: %w", err))
	}
	if ok, _ := version.GreaterThanOrEqualTo(list.CNIVersion, "1.1.0"); !ok {
		fmt.Fprintf(e.stdout, "network %s: cniVersion %s has no GC (1.1.0 added it): nothing collected\n", list.Name, list.CNIVersion)
		return exitOK
	}
	if list.DisableGC {
		fmt.Fprintf(e.stdout, "network %s: disableGC is set in its config: nothing collected\n", list.Name)
		return exitOK
	}
	if err := cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		return fail(e, "gc", describeCNIError(err))
	}
	names := make([]string, len(valid))
	for i, a := range valid {
		names[i] = a.ContainerID + "/" + a.IfName
	}
	fmt.Fprintf(e.stdout, "network %s: GC done; kept %d attachment(s) found in libcni's cache", list.Name, len(valid))
	if len(names) > 0 {
		fmt.Fprintf(e.stdout, ": %s", strings.Join(names, ", "))
	}
	fmt.Fprintln(e.stdout)
	return exitOK
}

// cachedAttachments returns the attachments of network in libcni's cache:
// what runtimes (and pierctl add) attached and have not deleted.
func cachedAttachments(cni *libcni.CNIConfig, network string) ([]types.GCAttachment, error) {
	all, err := cni.GetCachedAttachments("")
	if err != nil {
		return nil, err
	}
	valid := []types.GCAttachment{}
	for _, a := range all {
		if a.Network == network {
			valid = append(valid, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
		}
	}
	return valid, nil
}
