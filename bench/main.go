// Command bench measures Pier against the reference plugins (Debian's
// containernetworking-plugins: bridge + host-local) side by side in one run,
// inside a sandbox of its own: a node namespace where every plugin runs,
// each implementation with its own bridges and networks, and container
// namespaces beside it. Nothing touches the host's network.
//
// It reports, interleaving the implementations so drift hits both alike:
// whole-process ADD and DEL latency with N containers already attached,
// with and without ipMasq; bursts of ADDs started at once; NAT rules and
// set sizes after N; peak RSS of one plugin process; iperf3 between two
// containers through the bridge and through a bare veth pair. Each ratio is
// printed next to its target. A benchmark never fails on a figure. It runs
// in a mount namespace of its own with an empty /run (testnet.PrivateRun),
// so it leaves no file outside its temp dirs.
//
//	make build && go run ./bench                 # full run, writes docs/benchmarks.md
//	go run ./bench -n 0,200 -runs 20 -bursts 20  # quicker
//	go run ./bench -chain                        # port mappings + bandwidth vs the reference chain
//	go run ./bench -vs /tmp/old-bin -n 1 -bursts '' -iperf=false -out ''
//	                                             # this build against another build of pier
//	go run ./bench -vs /tmp/old-bin -n 1 -pier-conf '"networkPolicy":true'
//	                                             # the same with a key added to pier's configs
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/pier-cni/pier/internal/testnet"
)

type options struct {
	binDir, refDir string
	counts         []int
	bursts         []int
	runs           int
	iperf          bool
	out            string
	chain          bool
	vs             string // another build of pier to compare with, instead of the reference
	pierExtra      string // JSON members added to pier's network configs
}

func main() {
	var o options
	var counts, bursts string
	flag.StringVar(&o.binDir, "bin-dir", "bin", "directory with the built pier binaries")
	flag.StringVar(&o.refDir, "ref-dir", "/usr/lib/cni", "directory with the reference plugins")
	flag.StringVar(&counts, "n", "0,200,1000", "containers already attached, comma-separated")
	flag.StringVar(&bursts, "bursts", "20,100", "sizes of ADD bursts, comma-separated (empty: none)")
	flag.IntVar(&o.runs, "runs", 30, "measured ADD/DEL pairs per implementation, N and masq setting")
	flag.BoolVar(&o.iperf, "iperf", true, "measure iperf3 throughput (needs iperf3)")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "markdown report to write (empty: none)")
	flag.StringVar(&o.vs, "vs", "", "directory with another build of pier: compare ADD and DEL latency with it instead of the reference plugins (only the latency table is printed)")
	flag.StringVar(&o.pierExtra, "pier-conf", "", `JSON members added to pier's network configs, e.g. '"networkPolicy":true' (with -vs, to both builds')`)
	flag.BoolVar(&o.chain, "chain", false, "only compare ADD/DEL with two port mappings and a bandwidth limit: pier vs the reference chain bridge + portmap + bandwidth (see chain.go)")
	flag.Parse()
	var err error
	if o.counts, err = intList(counts); err != nil {
		fatal("-n: %v", err)
	}
	if o.bursts, err = intList(bursts); err != nil {
		fatal("-bursts: %v", err)
	}
	if os.Geteuid() != 0 {
		fatal("needs root: it creates network namespaces")
	}
	// pier takes its node lock at the fixed /run/pier/node.lock (and
	// iptables-legacy, where a test setup uses it, /run/xtables.lock): the
	// run gets a /run of its own, so that it leaves nothing in the
	// machine's.
	if err := testnet.PrivateRun(); err != nil {
		fatal("%v", err)
	}
	run := run
	if o.chain {
		run = runChain
	}
	if err := run(o); err != nil {
		fatal("%v", err)
	}
}

func run(o options) error {
	sb, err := newSandbox()
	if err != nil {
		return err
	}
	defer sb.close()
	// Ctrl-C or a timeout's SIGTERM must not leave the sandbox behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "bench: interrupted; removing the sandbox")
		sb.close()
		os.Exit(1)
	}()
	impls, err := implementations(o, sb.dataDir)
	if err != nil {
		return err
	}
	rep := &report{machine: describeMachine(o.refDir), other: impls[1].label}
	fmt.Println(rep.machine.String())
	if o.vs != "" { // only latency is compared between builds, and printed
		o.bursts, o.iperf, o.out = nil, false, ""
	}
	if rep.version, err = sb.timeVersion(impls[0], o.runs); err != nil {
		return err
	}
	fmt.Printf("pier VERSION (binary start): median %s\n", ms(median(rep.version)))
	if err := measureLatencies(sb, impls, o, rep); err != nil {
		return err
	}
	for _, size := range o.bursts {
		if err := measureBurst(sb, impls, size, rep); err != nil {
			return err
		}
	}
	if o.iperf {
		if err := measureThroughput(sb, impls[0], rep); err != nil {
			fmt.Fprintln(os.Stderr, "bench: iperf3:", err)
		}
	}
	rep.print(os.Stdout)
	if o.out != "" {
		if err := rep.writeMarkdown(o.out); err != nil {
			return err
		}
		fmt.Println("\nwrote", o.out)
	}
	return nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
