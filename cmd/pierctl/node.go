package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/nodestatus"
	"github.com/pier-cni/pier/internal/routing"
)

// nodeRoute is one row of `pierctl node`: a route pierd wants, the
// kernel's, or both.
type nodeRoute struct {
	Dst    netip.Prefix `json:"dst"`
	Via    netip.Addr   `json:"via"`
	Device string       `json:"device,omitempty"`
	Node   string       `json:"node,omitempty"`
	// Kernel: ok, missing (wanted, absent), differs (another next hop) or
	// stale (in the kernel with Pier's protocol, not wanted).
	Kernel string `json:"kernel"`
}

type nodeView struct {
	nodestatus.Status
	Table []nodeRoute `json:"table"`
}

func nodeShow(e *env, socket, format string) int {
	path := nodestatus.PathFor(socket)
	s, err := nodestatus.Read(path)
	if err != nil {
		return fail(e, "node", fmt.Errorf("%w (pierd writes it when it routes between nodes: --datastore kubernetes)", err))
	}
	kernel, err := kernelRoutes()
	if err != nil {
		return fail(e, "node", err)
	}
	v := nodeView{Status: s, Table: compareRoutes(s.Routes, kernel)}
	if format == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return fail(e, "node", err)
		}
		return exitOK
	}
	printNode(e.stdout, v, time.Now())
	return exitOK
}

// kernelRoutes lists the routes of Pier's protocol in the main table.
func kernelRoutes() (map[netip.Prefix]nodeRoute, error) {
	out := map[netip.Prefix]nodeRoute{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Protocol: routing.Protocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if r.Dst == nil {
				continue
			}
			dst, _ := netip.AddrFromSlice(r.Dst.IP)
			bits, _ := r.Dst.Mask.Size()
			via, _ := netip.AddrFromSlice(r.Gw)
			row := nodeRoute{Dst: netip.PrefixFrom(dst.Unmap(), bits), Via: via.Unmap()}
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				row.Device = l.Attrs().Name
			}
			out[row.Dst] = row
		}
	}
	return out, nil
}

// compareRoutes joins what pierd wants with what the kernel holds.
func compareRoutes(want []nodestatus.Route, kernel map[netip.Prefix]nodeRoute) []nodeRoute {
	var rows []nodeRoute
	seen := map[netip.Prefix]bool{}
	for _, w := range want {
		row := nodeRoute{Dst: w.Dst, Via: w.Via, Node: w.Node, Kernel: "missing"}
		if k, ok := kernel[w.Dst]; ok {
			row.Device, row.Kernel = k.Device, "ok"
			if k.Via != w.Via {
				row.Kernel = "differs: via " + k.Via.String()
			}
		}
		seen[w.Dst] = true
		rows = append(rows, row)
	}
	for dst, k := range kernel {
		if !seen[dst] {
			k.Kernel = "stale"
			rows = append(rows, k)
		}
	}
	slices.SortFunc(rows, func(a, b nodeRoute) int {
		if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
			return c
		}
		return a.Dst.Bits() - b.Dst.Bits()
	})
	return rows
}

func printNode(w io.Writer, v nodeView, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s\n", v.Node)
	fmt.Fprintf(tw, "datastore\t%s, API server %s\n", v.Datastore, v.Server)
	ranges := "none yet"
	if len(v.PodCIDRs) > 0 {
		ranges = fmt.Sprintf("%s (%s)", joinPrefixes(v.PodCIDRs), v.PodCIDRSource)
	}
	fmt.Fprintf(tw, "pod ranges\t%s\n", ranges)
	conf := v.Conflist
	if conf == "" {
		conf = "not written yet (the node's pod ranges are not known)"
	}
	fmt.Fprintf(tw, "CNI config\t%s\n", conf)
	mode := v.Mode
	if v.VTEP.IsValid() {
		mode += fmt.Sprintf(" (%s, VTEP %s, MAC %s)", routing.VXLANDevice, v.VTEP, v.VTEPMAC)
	}
	fmt.Fprintf(tw, "routing\t%s\n", mode)
	sync := "never"
	if !v.Synced.IsZero() {
		sync = fmt.Sprintf("%s ago, from %d Node objects", now.Sub(v.Synced).Round(time.Second), v.Nodes)
	}
	fmt.Fprintf(tw, "last reconcile\t%s\n", sync)
	if v.ApplyError != "" {
		fmt.Fprintf(tw, "reconcile error\t%s\n", v.ApplyError)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nroutes to other nodes (source: their Node objects, through the %s datastore; kernel: main table, proto %d):\n", v.Datastore, routing.Protocol)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tVIA\tDEVICE\tNODE\tKERNEL")
	for _, r := range v.Table {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Dst, r.Via, dash(r.Device), dash(r.Node), r.Kernel)
	}
	tw.Flush()
	if len(v.Problems) > 0 {
		fmt.Fprintf(w, "\nnot routed:\n  %s\n", strings.Join(v.Problems, "\n  "))
	}
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
