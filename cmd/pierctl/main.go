// Command pierctl is the operator's tool for Pier: it runs network configs
// through libcni like a runtime (add, del, check, gc, status), explains what
// an attachment or a network consists of (inspect, leases), checks configs
// (lint), imports host-local state (migrate), manages named network
// namespaces (netns) and runs the classic bridge demo. Each command lives in
// its own file; the logic a test or another tool may want lives in
// internal/ packages (confdir, leases, inspect, lint, migrate).
//
// pierctl acts on the network namespace it runs in, which is the node's, as
// the plugin does.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Exit codes, documented in docs/pierctl.md.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
	// exitWarn: lint and migrate found only warnings.
	exitWarn = 3
)

// env is what every command gets: where to write. Nothing global.
type env struct {
	stdout, stderr io.Writer
}

// runner runs a command whose flags are parsed, with its positional args.
type runner func(e *env, args []string) int

type command struct {
	name    string
	args    string // positional synopsis for usage
	summary string
	help    string // what -h prints after the synopsis
	// setup registers the command's flags and returns its runner, so that
	// -h, parsing and shell completion all see the same flags.
	setup func(fs *flag.FlagSet) runner
}

func commands() []command {
	cmds := cniCommands()
	cmds = append(cmds,
		inspectCommand(),
		leasesCommand(),
		lintCommand(),
		migrateCommand(),
		netnsCommand(),
		demoCommand(),
		completionCommand(),
		clusterCommand(),
		nodeCommand(),
		policyCommand(),
	)
	return cmds
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "-help":
		usage(stdout)
		return exitOK
	case "help":
		if len(args) == 1 {
			usage(stdout)
			return exitOK
		}
		args = []string{args[1], "-h"}
	}
	c, ok := lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "pierctl: unknown command %q\n\n", args[0])
		usage(stderr)
		return exitUsage
	}
	return c.exec(e, args[1:])
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// exec parses flags wherever they appear among the positional arguments
// (`pierctl add NET NS --ifname eth1` works as runtimes' users expect) and
// runs the command. -h prints the command's help on stdout and exits 0.
func (c command) exec(e *env, args []string) int {
	fs := flag.NewFlagSet("pierctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {} // -h prints the full help below; a bad flag gets a hint
	r := c.setup(fs)
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.printHelp(e.stdout, fs)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "Run 'pierctl %s -h' for help.\n", c.name)
		return exitUsage
	}
	return r(e, pos)
}

func (c command) printHelp(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: pierctl %s [flags] %s\n\n%s\n", c.name, c.args, c.summary)
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// parseInterleaved parses fs from args, letting flags follow positional
// arguments; everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// usageError prints a usage problem of command name and returns exitUsage.
func usageError(e *env, name, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "pierctl %s: %s\nRun 'pierctl %s -h' for help.\n", name, fmt.Sprintf(format, a...), name)
	return exitUsage
}

// fail prints an error of command name and returns exitError.
func fail(e *env, name string, err error) int {
	fmt.Fprintf(e.stderr, "pierctl %s: %v\n", name, err)
	return exitError
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: pierctl COMMAND [flags] [args]\n\nPier's operator tool. It acts on the network namespace it runs in (the node's).\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'pierctl COMMAND -h' for a command's arguments and flags.\n"+
		"Exit codes: 0 ok, 1 error, 2 usage, 3 warnings only (lint, migrate).")
}
