package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

type machine struct {
	date, cpu, kernel, goVersion, reference string
	cpus                                    int
}

func describeMachine(refDir string) machine {
	m := machine{date: time.Now().UTC().Format("2006-01-02 15:04 MST"), cpus: runtime.NumCPU(), goVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins").Output(); err == nil {
		m.reference = "containernetworking-plugins " + string(out) + " (" + refDir + ")"
	} else {
		m.reference = refDir
	}
	return m
}

func (m machine) String() string {
	return fmt.Sprintf("%s; %d CPUs (%s); Linux %s; %s; reference: %s", m.date, m.cpus, m.cpu, m.kernel, m.goVersion, m.reference)
}

type report struct {
	machine machine
	other   string // the label of what pier is compared with
	version []time.Duration
	latency []latencySample
	nat     []natCount
	bursts  []burstSample
	iperf   *throughput
}

func (r *report) find(n int, impl string, masq bool) *latencySample {
	for i := range r.latency {
		s := &r.latency[i]
		if s.n == n && s.impl == impl && s.masq == masq {
			return s
		}
	}
	return nil
}

// print writes the tables as plain text; writeMarkdown writes the same as
// markdown. Both come from rows().
func (r *report) print(w io.Writer) {
	for _, t := range r.tables() {
		fmt.Fprintf(w, "\n%s\n", t.title)
		fmt.Fprintln(w, strings.Join(t.head, " | "))
		for _, row := range t.rows {
			fmt.Fprintln(w, strings.Join(row, " | "))
		}
	}
}

type table struct {
	title string
	head  []string
	rows  [][]string
}

func (r *report) tables() []table {
	if r.other != "reference" { // two builds of pier: the targets, NAT counts and bursts are the reference's
		return []table{r.latencyTable()}
	}
	return []table{r.latencyTable(), r.targetTable(), r.natTable(), r.burstTable(), r.iperfTable()}
}

func (r *report) latencyTable() table {
	t := table{title: "Whole-process latency (median / p90), interleaved runs",
		head: []string{"N attached", "ipMasq", "op", "pier", r.other, "pier/" + r.other, "pier peak RSS"}}
	for _, s := range r.latency {
		if s.impl != "pier" {
			continue
		}
		ref := r.find(s.n, "reference", s.masq)
		if ref == nil {
			continue
		}
		for _, op := range []string{"ADD", "DEL"} {
			p, q := s.add, ref.add
			if op == "DEL" {
				p, q = s.del, ref.del
			}
			t.rows = append(t.rows, []string{fmt.Sprint(s.n), fmt.Sprint(s.masq), op,
				ms(median(p)) + " / " + ms(p90(p)), ms(median(q)) + " / " + ms(p90(q)),
				ratio(median(p), median(q)), fmt.Sprintf("%.1f MiB", float64(medianInt(s.addRSSKiB))/1024)})
		}
	}
	return t
}

func (r *report) targetTable() table {
	t := table{title: "Targets (ratios in this run)", head: []string{"measure", "value", "target", "met"}}
	add := func(name string, v, target float64, lessIsBetter bool) {
		met := v <= target
		if !lessIsBetter {
			met = v >= target
		}
		cmp := "≤"
		if !lessIsBetter {
			cmp = "≥"
		}
		t.rows = append(t.rows, []string{name, fmt.Sprintf("%.2f×", v), fmt.Sprintf("%s %.2f×", cmp, target), yes(met)})
	}
	version := median(r.version)
	counts := r.counts()
	for _, n := range counts {
		p, q := r.find(n, "pier", true), r.find(n, "reference", true)
		if p == nil || q == nil {
			continue
		}
		addTarget := 0.25 // an empty bridge: process start weighs most
		if n >= 100 {
			addTarget = 0.15
		}
		add(fmt.Sprintf("ADD with ipMasq, N=%d: pier / reference", n), frac(median(p.add), median(q.add)), addTarget, true)
		add(fmt.Sprintf("ADD with ipMasq, N=%d: pier / pier VERSION", n), frac(median(p.add), version), 2.5, true)
		add(fmt.Sprintf("DEL with ipMasq, N=%d: pier / reference", n), frac(median(p.del), median(q.del)), 0.3, true)
		if p, q := r.find(n, "pier", false), r.find(n, "reference", false); p != nil && q != nil {
			add(fmt.Sprintf("DEL without ipMasq, N=%d: pier / reference", n), frac(median(p.del), median(q.del)), 0.8, true)
		}
	}
	if len(counts) > 1 {
		first, last := r.find(counts[0], "pier", true), r.find(counts[len(counts)-1], "pier", true)
		add(fmt.Sprintf("pier ADD, N=%d / N=%d", counts[len(counts)-1], counts[0]), frac(median(last.add), median(first.add)), 1.3, true)
	}
	for _, b := range r.bursts {
		if b.impl != "pier" {
			continue
		}
		for _, o := range r.bursts {
			if o.impl == "reference" && o.size == b.size {
				add(fmt.Sprintf("burst of %d ADDs, wall: pier / reference", b.size), frac(b.wall, o.wall), 0.15, true)
			}
		}
	}
	if r.iperf != nil {
		add("throughput: Pier's bridge / a bare bridge", r.iperf.bridgeBps/r.iperf.bareBridgeBps, 0.95, false)
	}
	return t
}

func (r *report) natTable() table {
	t := table{title: "NAT state in the node with N containers per masquerading network",
		head: []string{"N", "pier nft rules", "pier map elements", "reference iptables chains", "reference iptables rules"}}
	for _, c := range r.nat {
		t.rows = append(t.rows, []string{fmt.Sprint(c.n), fmt.Sprint(c.pierRules), fmt.Sprint(c.pierElems), fmt.Sprint(c.refChains), fmt.Sprint(c.refRules)})
	}
	return t
}

func (r *report) burstTable() table {
	t := table{title: "Bursts: ADDs started at once on an empty network, then DELs at once",
		head: []string{"size", "impl", "ADD wall", "failures", "per-ADD wait median / p90 / max", "DEL wall"}}
	for _, b := range r.bursts {
		t.rows = append(t.rows, []string{fmt.Sprint(b.size), b.impl, ms(b.wall), fmt.Sprint(b.failures),
			ms(median(b.waits)) + " / " + ms(p90(b.waits)) + " / " + ms(quantile(b.waits, 1)), ms(b.delWall)})
	}
	return t
}

func (r *report) iperfTable() table {
	t := table{title: "iperf3 TCP, " + iperfSeconds + " s", head: []string{"path", "throughput"}}
	if r.iperf != nil {
		t.rows = append(t.rows,
			[]string{"container ↔ container through Pier's bridge", gbps(r.iperf.bridgeBps)},
			[]string{"container ↔ container through a bare bridge made by hand", gbps(r.iperf.bareBridgeBps)},
			[]string{"bare veth pair (the physical limit here)", gbps(r.iperf.vethBps)})
	}
	return t
}

func (r *report) counts() []int {
	var out []int
	for _, s := range r.latency {
		if !slices.Contains(out, s.n) {
			out = append(out, s.n)
		}
	}
	return out
}

// writeMarkdown replaces the generated part of the report file (between
// the results markers) and keeps the hand-written analysis around it.
func (r *report) writeMarkdown(path string) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Machine: %s. pier VERSION (binary start) median: %s.\n", r.machine, ms(median(r.version)))
	for _, t := range r.tables() {
		fmt.Fprintf(&b, "\n#### %s\n\n| %s |\n|%s\n", t.title, strings.Join(t.head, " | "), strings.Repeat("---|", len(t.head)))
		for _, row := range t.rows {
			fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
		}
	}
	const begin, end = "<!-- results:begin -->", "<!-- results:end -->"
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(old)
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		doc = "# Benchmarks\n\n" + begin + "\n" + end + "\n"
		i, j = strings.Index(doc, begin), strings.Index(doc, end)
	}
	doc = doc[:i+len(begin)] + "\n" + b.String() + "\n" + doc[j:]
	return os.WriteFile(path, []byte(doc), 0o644)
}

func median(ds []time.Duration) time.Duration { return quantile(ds, 0.5) }
func p90(ds []time.Duration) time.Duration    { return quantile(ds, 0.9) }

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*q)]
}

func medianInt(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func frac(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func ratio(a, b time.Duration) string { return fmt.Sprintf("%.2f×", frac(a, b)) }
func ms(d time.Duration) string       { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
func gbps(bps float64) string         { return fmt.Sprintf("%.2f Gbit/s", bps/1e9) }

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
