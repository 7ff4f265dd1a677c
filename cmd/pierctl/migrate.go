package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/migrate"
)

func migrateCommand() command {
	return command{
		name: "migrate", args: "host-local --network NAME",
		summary: "import host-local's reservations of a network into Pier's store (dry run by default)",
		help: `Reads the reference host-local plugin's reservations of network NAME
(<data-dir>/<network>/<address> files holding the container ID and
interface name) and reserves each address for the same attachment in
Pier's store, so that a node switched from host-local to pier-ipam never
hands out an address a running container has. Without --apply it only
reports what it would do. Nothing is written when a conflict is found.

The network's config in --conf-dir supplies the ranges (its ipam section,
host-local's or pier-ipam's), the default --data-dir (the ipam dataDir of a
host-local config, else /var/lib/cni/networks) and the default
--to-data-dir (the dataDir of a pier-ipam config, else /var/lib/cni/pier).
host-local's files are left in place. Addresses outside every range are
skipped (Pier never hands them out); running it again is harmless.

Exit status: 0 done (or nothing to do), 1 conflicts or unreadable entries,
3 warnings only (skipped entries, old-format entries).`,
		setup: func(fs *flag.FlagSet) runner {
			network := fs.String("network", "", "the network to migrate (required)")
			confDir := fs.String("conf-dir", confdir.DefaultDir, "directory of network configurations")
			from := fs.String("data-dir", "", "host-local's dataDir (holding <network>/)")
			to := fs.String("to-data-dir", "", "Pier's dataDir (holding <network>/)")
			ifName := fs.String("default-ifname", "eth0", "interface name for entries in host-local's old format, which record none")
			apply := fs.Bool("apply", false, "write into Pier's store (default: dry run)")
			out := outputFlag(fs)
			return func(e *env, args []string) int {
				if len(args) != 1 || args[0] != "host-local" {
					return usageError(e, "migrate", "want 'host-local' (the only source supported)")
				}
				if *network == "" {
					return usageError(e, "migrate", "--network is required")
				}
				if code, ok := checkOutput(e, "migrate", *out); !ok {
					return code
				}
				opts, err := migrateOptions(*confDir, *network, *from, *to)
				if err != nil {
					return fail(e, "migrate", err)
				}
				opts.DefaultIfName, opts.Apply = *ifName, *apply
				return runMigrate(e, opts, *out)
			}
		},
	}
}

// migrateOptions resolves the source and target directories from the flags
// and the network's config.
func migrateOptions(confDir, network, from, to string) (migrate.Options, error) {
	n, err := confdir.Load(confDir, network)
	if err != nil {
		return migrate.Options{}, err
	}
	if n.IPAM == nil {
		if n.IPAMErr != nil {
			return migrate.Options{}, fmt.Errorf("network %q: the ranges of its ipam section: %w", network, n.IPAMErr)
		}
		return migrate.Options{}, fmt.Errorf("network %q has no ipam section with ranges to migrate into", network)
	}
	var raw struct {
		IPAM struct {
			Type    string `json:"type"`
			DataDir string `json:"dataDir"`
		} `json:"ipam"`
	}
	_ = json.Unmarshal(n.Stdin, &raw) // decoded already by confdir
	if from == "" {
		from = migrate.DefaultHostLocalDir
		if raw.IPAM.Type == "host-local" && raw.IPAM.DataDir != "" {
			from = raw.IPAM.DataDir
		}
	}
	target := *n.IPAM
	switch {
	case to != "":
		target.DataDir = to
	case raw.IPAM.Type != config.IPAMType:
		target.DataDir = config.DefaultDataDir
	}
	return migrate.Options{HostLocalDir: from, Target: &target}, nil
}

func runMigrate(e *env, opts migrate.Options, out string) int {
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	rep, err := migrate.Run(ctx, opts)
	if err != nil {
		return fail(e, "migrate", err)
	}
	counts, errs := rep.Counts()
	if out == "json" {
		if err := writeJSON(e.stdout, rep); err != nil {
			return fail(e, "migrate", err)
		}
	} else {
		printMigration(e, rep, counts, errs)
	}
	warns := counts[migrate.Skip]
	for _, it := range rep.Items {
		if it.Action == migrate.Import && it.Note != "" {
			warns++
		}
	}
	switch {
	case errs > 0:
		return exitError
	case warns > 0:
		return exitWarn
	}
	return exitOK
}

func printMigration(e *env, rep *migrate.Report, counts map[migrate.Action]int, errs int) {
	fmt.Fprintf(e.stdout, "network %s: host-local %s -> pier %s\n", rep.Network, rep.Source, rep.Target)
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tCONTAINER\tIFNAME\tRANGE SET\tACTION\tNOTE")
	for _, it := range rep.Items {
		set := fmt.Sprint(it.RangeSet)
		if it.RangeSet < 0 {
			set = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", it.Addr, it.ContainerID, it.IfName, set, it.Action, it.Note)
	}
	_ = tw.Flush() // stdout; a failed write shows as missing output
	for _, p := range rep.Problems {
		fmt.Fprintf(e.stdout, "problem: %s\n", p)
	}
	verb := "to import"
	if rep.Applied {
		verb = "imported"
	}
	summary := fmt.Sprintf("%d %s, %d already present, %d skipped, %d conflict(s)",
		counts[migrate.Import], verb, counts[migrate.Present], counts[migrate.Skip], counts[migrate.Conflict])
	switch {
	case rep.Applied:
		fmt.Fprintf(e.stdout, "applied: %s\n", summary)
	case errs > 0:
		fmt.Fprintf(e.stdout, "nothing written: %s; solve the errors first\n", summary)
	default:
		fmt.Fprintf(e.stdout, "dry run: %s; run again with --apply to write\n", summary)
	}
}
