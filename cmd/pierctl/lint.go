package main

import (
	"flag"
	"fmt"

	"github.com/pier-cni/pier/internal/confdir"
	"github.com/pier-cni/pier/internal/lint"
)

func lintCommand() command {
	return command{
		name: "lint", args: "CONFIG-FILE...",
		summary: "validate configs exactly as pier would, and warn about risky ones",
		help: `Errors are what pier itself would refuse: the file goes through the same
code as the plugin (config.LoadNetConf and config.LoadIPAM, fed what libcni
would put on the plugin's stdin), and each error carries the CNI error
code pier would return. Warnings are what pier accepts but probably should
not be so: keys pier ignores (often typos), subnets overlapping other
networks of --conf-dir, the same network name defined twice, a default
route without "ipMasq", an "mtu" larger than the node's uplink (the link of
the default route of the namespace pierctl runs in), and a node whose own
filters drop forwarded traffic (iptables FORWARD, Docker, nftables,
firewalld) with "firewallBackend": "none".

Exit status: 0 nothing found, 1 at least one error, 3 warnings only.`,
		setup: func(fs *flag.FlagSet) runner {
			confDir := fs.String("conf-dir", confdir.DefaultDir, "the node's network configurations, for overlap checks (empty: skip)")
			out := outputFlag(fs)
			return func(e *env, args []string) int {
				if len(args) == 0 {
					return usageError(e, "lint", "want at least one CONFIG-FILE")
				}
				if code, ok := checkOutput(e, "lint", *out); !ok {
					return code
				}
				return runLint(e, args, lint.Options{ConfDir: *confDir, Uplinks: lint.NodeUplinks, HostFilters: lint.NodeHostFilters}, *out)
			}
		},
	}
}

func runLint(e *env, files []string, opts lint.Options, out string) int {
	var results []*lint.Result
	nerr, nwarn := 0, 0
	for _, f := range files {
		r := lint.File(f, opts)
		results = append(results, r)
		errs, warns := r.Counts()
		nerr, nwarn = nerr+errs, nwarn+warns
	}
	if out == "json" {
		if err := writeJSON(e.stdout, results); err != nil {
			return fail(e, "lint", err)
		}
	} else {
		for _, r := range results {
			for _, f := range r.Findings {
				fmt.Fprintf(e.stdout, "%s: %s: %s\n", r.File, f.Severity, f.Message)
			}
			if len(r.Findings) == 0 {
				fmt.Fprintf(e.stdout, "%s: ok (network %q)\n", r.File, r.Network)
			}
		}
	}
	switch {
	case nerr > 0:
		return exitError
	case nwarn > 0:
		return exitWarn
	}
	return exitOK
}
