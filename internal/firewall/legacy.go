package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// The legacy side: x_tables, through the iptables-legacy binaries.

// legacyTimeout bounds one iptables-legacy run, its wait for the xtables
// lock included.
const legacyTimeout = 10 * time.Second

type legacyBackend struct{}

// legacyFamily is one of iptables-legacy and ip6tables-legacy.
type legacyFamily struct {
	bin   string // the binary
	names string // the namespace's list of loaded x_tables tables
}

var legacyFamilies = []legacyFamily{
	{"iptables-legacy", "ip_tables_names"},
	{"ip6tables-legacy", "ip6_tables_names"},
}

// loaded reports whether the namespace has a legacy filter table: the
// kernel lists a table once something used it, and without one nothing of
// x_tables can drop, so no process is run. /proc/thread-self/net is the
// calling thread's namespace, which is where the plugin works.
func (f legacyFamily) loaded() bool {
	b, err := os.ReadFile("/proc/thread-self/net/" + f.names)
	if err != nil {
		return false // no x_tables in this kernel: nothing to drop
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "filter" {
			return true
		}
	}
	return false
}

func (f legacyFamily) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), legacyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bin, append([]string{"-w", "5", "-t", "filter"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", f.bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// legacyPlace is where the accepts go in a legacy filter table.
type legacyPlace struct {
	fam      legacyFamily
	chain    string
	jumpFrom string
}

func (legacyBackend) scan(_ *view, bridge string) ([]Place, error) {
	var out []Place
	for _, f := range legacyFamilies {
		if !f.loaded() {
			continue
		}
		listing, err := f.run("-S")
		if err != nil {
			if errors.Is(err, exec.ErrNotFound) {
				continue // the binary is gone: nothing can have loaded rules since
			}
			return out, err
		}
		why := legacyDropsWhy(f, listing)
		if why == "" {
			continue
		}
		p := legacyPlace{fam: f, chain: pierChain, jumpFrom: "FORWARD"}
		if strings.Contains(listing, "\n-N "+dockerUserChain+"\n") || strings.HasPrefix(listing, "-N "+dockerUserChain+"\n") {
			p.chain, p.jumpFrom = dockerUserChain, ""
		}
		out = append(out, Place{Backend: BackendIptablesLegacy, Where: f.bin + " filter " + p.chain, Why: why,
			Present: p.present(listing, bridge), key: p})
	}
	return out, nil
}

// legacyDropsWhy reads `iptables -S` of the filter table.
func legacyDropsWhy(f legacyFamily, listing string) string {
	var last string
	for _, line := range strings.Split(listing, "\n") {
		switch {
		case line == "-P FORWARD DROP":
			return f.bin + " filter FORWARD has policy DROP"
		case strings.HasPrefix(line, "-A FORWARD "):
			last = line
		}
	}
	if last == "-A FORWARD -j DROP" || strings.HasPrefix(last, "-A FORWARD -j REJECT") {
		return f.bin + " filter FORWARD ends in an unconditional " + strings.Fields(last)[3]
	}
	return ""
}

// ruleSpecs are the three accepts as iptables arguments, in the order
// `iptables -S` prints their options.
func legacyRules(bridge string) [][]string {
	c := []string{"-m", "comment", "--comment", Comment(bridge)}
	return [][]string{
		append(append([]string{"-i", bridge}, c...), "-j", "ACCEPT"),
		append(append([]string{"-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"}, c...), "-j", "ACCEPT"),
		append(append([]string{"-o", bridge, "-m", "conntrack", "--ctstate", "DNAT"}, c...), "-j", "ACCEPT"),
	}
}

func jumpRule() []string {
	return []string{"-m", "comment", "--comment", jumpComment, "-j", pierChain}
}

// specLine is a rule as `iptables -S` prints it.
func specLine(chain string, spec []string) string {
	parts := []string{"-A", chain}
	for _, a := range spec {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func (p legacyPlace) present(listing, bridge string) bool {
	lines := map[string]bool{}
	for _, l := range strings.Split(listing, "\n") {
		lines[l] = true
	}
	for _, r := range legacyRules(bridge) {
		if !lines[specLine(p.chain, r)] {
			return false
		}
	}
	return p.jumpFrom == "" || lines[specLine(p.jumpFrom, jumpRule())]
}

func (legacyBackend) add(_ *view, bridge string, pl Place) error {
	p, ok := pl.key.(legacyPlace)
	if !ok {
		return fmt.Errorf("place %s is not a legacy iptables place", pl)
	}
	f := p.fam
	if err := deleteAll(f, p.chain, legacyRules(bridge)); err != nil {
		return err
	}
	if p.jumpFrom != "" {
		if _, err := f.run("-S", p.chain); err != nil {
			if _, err := f.run("-N", p.chain); err != nil {
				return err
			}
		}
		if _, err := f.run(append([]string{"-C", p.jumpFrom}, jumpRule()...)...); err != nil {
			if _, err := f.run(append([]string{"-I", p.jumpFrom, "1"}, jumpRule()...)...); err != nil {
				return err
			}
		}
	}
	rules := legacyRules(bridge)
	for i := len(rules) - 1; i >= 0; i-- {
		if _, err := f.run(append([]string{"-I", p.chain, "1"}, rules[i]...)...); err != nil {
			return err
		}
	}
	return nil
}

// deleteAll deletes every copy of the rules from chain; a missing chain
// or rule is fine.
func deleteAll(f legacyFamily, chain string, rules [][]string) error {
	listing, err := f.run("-S", chain)
	if err != nil {
		return nil // no such chain
	}
	for _, r := range rules {
		for n := strings.Count(listing, specLine(chain, r)+"\n"); n > 0; n-- {
			if _, err := f.run(append([]string{"-D", chain}, r...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

func (legacyBackend) remove(_ *view, bridge string) error {
	var errs []error
	for _, f := range legacyFamilies {
		if !f.loaded() {
			continue
		}
		for _, chain := range []string{dockerUserChain, pierChain} {
			errs = append(errs, deleteAll(f, chain, legacyRules(bridge)))
		}
		// PIER-FORWARD without rules goes, with its jump.
		if out, err := f.run("-S", pierChain); err == nil && strings.TrimSpace(out) == "-N "+pierChain {
			errs = append(errs, deleteAll(f, "FORWARD", [][]string{jumpRule()}))
			if _, err := f.run("-X", pierChain); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
