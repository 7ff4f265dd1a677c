package main

// leases and status: what a pier-ipam network's store holds, and whether the
// network can serve an ADD.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"text/tabwriter"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/leases"
)

// sourceFlags registers how a command reaches a network's reservations and
// returns the Source to use: pierd at --socket, or at the network's own
// ipam.daemonSocket, or the node's local store. Every command that reads
// reservations (leases, status, inspect) goes through it.
func sourceFlags(fs *flag.FlagSet) func() (leases.Source, error) {
	socket := fs.String("socket", "", "read reservations from pierd at this socket (default: the network's ipam.daemonSocket, else the local store)")
	return func() (leases.Source, error) { return leases.Daemon{Socket: *socket}, nil }
}

// outputFlag is -o text|json.
func outputFlag(fs *flag.FlagSet) *string {
	return fs.String("o", "text", "output format: text or json")
}

func checkOutput(e *env, name, o string) (int, bool) {
	if o != "text" && o != "json" {
		return usageError(e, name, "-o %q: want text or json", o), false
	}
	return 0, true
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func leasesCommand() command {
	return command{
		name: "leases", args: "",
		summary: "list the addresses pier-ipam holds, per network and container",
		help: `Reads the reservations of every pier-ipam network of --conf-dir (or only
--network NAME) from the node's store (<dataDir>/<network>), under the
store's lock, as the plugin does. Read-only: a network whose store does
not exist yet simply has no leases.`,
		setup: func(fs *flag.FlagSet) runner {
			confDir := fs.String("conf-dir", confdir.DefaultDir, "directory of network configurations")
			network := fs.String("network", "", "only this network")
			out := outputFlag(fs)
			source := sourceFlags(fs)
			return func(e *env, args []string) int {
				if len(args) > 0 {
					return usageError(e, "leases", "takes no arguments (use --network NAME)")
				}
				if code, ok := checkOutput(e, "leases", *out); !ok {
					return code
				}
				src, err := source()
				if err != nil {
					return fail(e, "leases", err)
				}
				return runLeases(e, src, *confDir, *network, *out)
			}
		},
	}
}

// leaseRow is one reservation as leases prints it.
type leaseRow struct {
	Network     string `json:"network"`
	Address     string `json:"address"`
	ContainerID string `json:"containerID,omitempty"`
	IfName      string `json:"ifname,omitempty"`
	RangeSet    int    `json:"rangeSet"`
	Store       string `json:"store"`
	Problem     string `json:"problem,omitempty"`
}

func runLeases(e *env, src leases.Source, confDir, only, out string) int {
	nets, code := pierNetworks(e, "leases", confDir, only)
	if nets == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	rows := []leaseRow{}
	for _, n := range nets {
		res, err := src.List(ctx, n.IPAM)
		if err != nil {
			fmt.Fprintf(e.stderr, "pierctl leases: network %s: %v\n", n.Name, err)
			code = exitError
			continue
		}
		for _, r := range res {
			rows = append(rows, leaseRow{Network: n.Name, Address: r.Addr.String(), ContainerID: r.Owner.ContainerID,
				IfName: r.Owner.IfName, RangeSet: r.RangeSet, Store: src.Where(n.IPAM), Problem: r.Problem})
		}
	}
	if out == "json" {
		if err := writeJSON(e.stdout, rows); err != nil {
			return fail(e, "leases", err)
		}
		return code
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NETWORK\tADDRESS\tCONTAINER\tIFNAME\tRANGE SET\tNOTE")
	for _, r := range rows {
		set, note := strconv.Itoa(r.RangeSet), r.Problem
		if r.RangeSet < 0 {
			set, note = "-", "outside every configured range "+note
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Network, r.Address, dash(r.ContainerID), dash(r.IfName), set, note)
	}
	if err := tw.Flush(); err != nil {
		return fail(e, "leases", err)
	}
	return code
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pierNetworks returns the pier-ipam networks of confDir (only one when
// only is set). It returns nil networks, with the exit code, when there is
// nothing to show.
func pierNetworks(e *env, name, confDir, only string) ([]*confdir.Network, int) {
	if only != "" {
		n, err := confdir.Load(confDir, only)
		if err != nil {
			return nil, fail(e, name, err)
		}
		if _, err := n.PierIPAM(); err != nil {
			return nil, fail(e, name, err)
		}
		return []*confdir.Network{n}, exitOK
	}
	all, errs := confdir.All(confDir)
	code := exitOK
	for _, err := range errs {
		fmt.Fprintf(e.stderr, "pierctl %s: skipping %v\n", name, err)
		code = exitError
	}
	seen := map[string]bool{}
	nets := []*confdir.Network{}
	for _, n := range all {
		if _, err := n.PierIPAM(); err != nil || seen[n.Name] {
			continue // not Pier's store, or shadowed by an earlier file (libcni takes the first)
		}
		seen[n.Name] = true
		nets = append(nets, n)
	}
	return nets, code
}

func statusCommand() command {
	return command{
		name: "status", args: "NETWORK",
		summary: "run the network's CNI STATUS through libcni and show pool usage per range",
		help: `Runs CNI STATUS (cniVersion 1.1.0 and later) for every plugin of NETWORK
through libcni: does the network say it can serve an ADD, and if not, why
(code 50: pool exhausted or store unusable). For a pier-ipam network it
then prints the pool: addresses used and free per range, read from the
node's store. Exit status 1 when STATUS fails or the pool cannot be read.`,
		setup: func(fs *flag.FlagSet) runner {
			var cf cniFlags
			cf.register(fs)
			out := outputFlag(fs)
			source := sourceFlags(fs)
			return func(e *env, args []string) int {
				if len(args) != 1 {
					return usageError(e, "status", "want NETWORK, got %d arguments", len(args))
				}
				if code, ok := checkOutput(e, "status", *out); !ok {
					return code
				}
				src, err := source()
				if err != nil {
					return fail(e, "status", err)
				}
				list, err := libcni.LoadNetworkConf(cf.confDir, args[0])
				if err != nil {
					return fail(e, "status", err)
				}
				return runStatus(e, cf.cni(), src, list, *out)
			}
		},
	}
}

// statusReport is what status prints with -o json.
type statusReport struct {
	Network    string `json:"network"`
	CNIVersion string `json:"cniVersion"`
	// CNIStatus is "ok", "failed" or "unsupported" (cniVersion < 1.1.0).
	CNIStatus string         `json:"cniStatus"`
	Error     string         `json:"error,omitempty"`
	Pool      *leases.Status `json:"pool,omitempty"`
	PoolError string         `json:"poolError,omitempty"`
}

func runStatus(e *env, cni *libcni.CNIConfig, src leases.Source, list *libcni.NetworkConfigList, out string) int {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	rep := statusReport{Network: list.Name, CNIVersion: list.CNIVersion, CNIStatus: "ok"}
	code := exitOK
	if ok, _ := version.GreaterThanOrEqualTo(list.CNIVersion, "1.1.0"); !ok {
		rep.CNIStatus = "unsupported"
	} else if err := cni.GetStatusNetworkList(ctx, list); err != nil {
		rep.CNIStatus, rep.Error, code = "failed", describeCNIError(err).Error(), exitError
	}
	if n := confdir.FromList(list); n.PluginIndex >= 0 {
		if conf, err := n.PierIPAM(); err == nil {
			if rep.Pool, err = src.Status(ctx, conf); err != nil {
				rep.PoolError, code = err.Error(), exitError
			}
		}
	}
	if out == "json" {
		if err := writeJSON(e.stdout, rep); err != nil {
			return fail(e, "status", err)
		}
		return code
	}
	printStatus(e.stdout, rep)
	return code
}

func printStatus(w io.Writer, rep statusReport) {
	fmt.Fprintf(w, "network %s (cniVersion %s)\n", rep.Network, rep.CNIVersion)
	switch rep.CNIStatus {
	case "ok":
		fmt.Fprintln(w, "CNI STATUS: ok, every plugin can serve an ADD")
	case "failed":
		fmt.Fprintf(w, "CNI STATUS: failed: %s\n", rep.Error)
	default:
		fmt.Fprintf(w, "CNI STATUS: not run: cniVersion %s predates STATUS (1.1.0)\n", rep.CNIVersion)
	}
	if rep.PoolError != "" {
		fmt.Fprintf(w, "pool: cannot be read: %s\n", rep.PoolError)
	}
	if rep.Pool == nil {
		return
	}
	printPool(w, rep.Pool, "")
}

// printPool prints usage per range, each line prefixed with indent.
func printPool(w io.Writer, p *leases.Status, indent string) {
	ready := "an ADD can get an address in every range set"
	if !p.Ready {
		ready = "an ADD cannot be served: " + p.Reason
	}
	fmt.Fprintf(w, "%spool (pier-ipam, store %s): %s\n", indent, p.Store, ready)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s  SET\tRANGE\tSUBNET\tGATEWAY\tUSED\tFREE\tSIZE\n", indent)
	for _, r := range p.Ranges {
		fmt.Fprintf(tw, "%s  %d\t%s-%s\t%s\t%s\t%d\t%s\t%s\n", indent, r.RangeSet, r.Start, r.End, r.Subnet, r.Gateway,
			r.Used, count(r.Free()), count(r.Size))
	}
	_ = tw.Flush() // w is stdout or a buffer; a failed write shows up as missing output
	if p.Outside > 0 {
		fmt.Fprintf(w, "%s  %d reservation(s) outside every configured range (the ranges changed since)\n", indent, p.Outside)
	}
	if p.Unreadable > 0 {
		fmt.Fprintf(w, "%s  %d unreadable record(s): their addresses stay held until GC can tell nobody owns them\n", indent, p.Unreadable)
	}
}

// count prints a range size; leases.RangeUsage saturates sizes of ranges
// larger than 2^64-1 addresses there.
func count(n uint64) string {
	if n == math.MaxUint64 {
		return ">=2^64"
	}
	return strconv.FormatUint(n, 10)
}
