package main

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/netpol/explain"
)

func policyCommand() command {
	return command{
		name: "policy", args: "pods | explain SRC DST PORT[/PROTO]",
		summary: "network policy on this node: which policies isolate each pod, why a flow passes or not",
		help: `Reads the network policy state pierd installed in table inet pier (pierd
keeps it from the Kubernetes API; the plugin enters each pod's addresses):

  pods     every local pod with its addresses and, per direction, whether
           it is open (no policy selects it), isolated (and by which
           policies), not yet classified (pierd has not seen it: dropped)
           or gone
  explain  runs the installed rules for a new connection from SRC to DST
           on PORT (tcp unless /udp or /sctp) and prints the rules that
           decided, with the policy each belongs to. SRC and DST are
           addresses or namespace/pod. This node decides the egress of its
           own pods and the ingress of its own pods; run it on the other
           pod's node for the other half.`,
		setup: func(fs *flag.FlagSet) runner {
			out := outputFlag(fs)
			return func(e *env, args []string) int {
				if code, ok := checkOutput(e, "policy", *out); !ok {
					return code
				}
				switch {
				case len(args) == 1 && args[0] == "pods":
					return policyPods(e, *out)
				case len(args) == 4 && args[0] == "explain":
					return policyExplain(e, args[1:], *out)
				}
				return usageError(e, "policy", "want 'pods' or 'explain SRC DST PORT[/PROTO]'")
			}
		},
	}
}

func policyPods(e *env, out string) int {
	pods, err := dataplane.LocalPods()
	if err != nil {
		return fail(e, "policy", err)
	}
	if out == "json" {
		if err := writeJSON(e.stdout, pods); err != nil {
			return fail(e, "policy", err)
		}
		return exitOK
	}
	if len(pods) == 0 {
		fmt.Fprintln(e.stdout, "no pod of this node is held to network policy (no element in the maps np-ingress4/6, np-egress4/6 of table inet pier)")
		return exitOK
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tADDRESSES\tINGRESS\tEGRESS\tATTACHMENT")
	for _, p := range pods {
		var addrs []string
		for _, a := range p.Addrs {
			addrs = append(addrs, a.String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", dash(p.Pod), strings.Join(addrs, ","), dirText(p.Ingress), dirText(p.Egress), p.Owner)
	}
	return exitCode(tw.Flush())
}

func dirText(d dataplane.DirView) string {
	if d.State == "isolated" {
		if len(d.Policies) == 0 {
			return "isolated (allows nothing)"
		}
		return "isolated by " + strings.Join(d.Policies, ",")
	}
	return dash(d.State)
}

func exitCode(err error) int {
	if err != nil {
		return exitError
	}
	return exitOK
}

func policyExplain(e *env, args []string, out string) int {
	flow, err := parseFlow(args)
	if err != nil {
		return usageError(e, "policy", "%v", err)
	}
	toNode, err := isLocalAddr(flow.Dst)
	if err != nil {
		return fail(e, "policy", err)
	}
	rep, err := explain.Explain(flow, toNode)
	if err != nil {
		return fail(e, "policy", err)
	}
	if out == "json" {
		if err := writeJSON(e.stdout, rep); err != nil {
			return fail(e, "policy", err)
		}
		return exitOK
	}
	_, err = io.WriteString(e.stdout, explain.Render(rep))
	return exitCode(err)
}

// parseFlow reads SRC DST PORT[/PROTO].
func parseFlow(args []string) (explain.Flow, error) {
	var f explain.Flow
	var err error
	if f.Src, err = resolveEndpoint(args[0]); err != nil {
		return f, fmt.Errorf("SRC: %w", err)
	}
	if f.Dst, err = resolveEndpoint(args[1]); err != nil {
		return f, fmt.Errorf("DST: %w", err)
	}
	if f.Src.Is4() != f.Dst.Is4() {
		return f, fmt.Errorf("SRC %s and DST %s are of different families", f.Src, f.Dst)
	}
	portText, protoText, _ := strings.Cut(args[2], "/")
	if protoText == "" {
		protoText = "tcp"
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return f, fmt.Errorf("PORT %q: want 1-65535, optionally with /tcp, /udp or /sctp", args[2])
	}
	proto, ok := explain.ParseProto(protoText)
	if !ok {
		return f, fmt.Errorf("protocol %q: want tcp, udp or sctp", protoText)
	}
	f.Port, f.Proto = uint16(port), proto
	return f, nil
}

// resolveEndpoint takes an address or a pod known to the installed state.
func resolveEndpoint(s string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), nil
	}
	if !strings.Contains(s, "/") {
		return netip.Addr{}, fmt.Errorf("%q is neither an address nor namespace/pod", s)
	}
	addrs, err := dataplane.PodAddrs(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("pod %s is unknown here: neither a local pod nor in any selector set of this node; give its address", s)
	}
	return addrs[0], nil
}

// isLocalAddr reports whether a is one of this namespace's (the node's)
// addresses: traffic to it takes the input hook.
func isLocalAddr(a netip.Addr) (bool, error) {
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, family)
	if err != nil {
		return false, fmt.Errorf("list the node's addresses: %w", err)
	}
	for _, l := range addrs {
		if b, ok := netip.AddrFromSlice(l.IP); ok && b.Unmap() == a {
			return true, nil
		}
	}
	return false, nil
}
