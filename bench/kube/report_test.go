package kubebench

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	beginMarker = "<!-- kube-results:begin -->"
	endMarker   = "<!-- kube-results:end -->"
)

type report struct {
	started time.Time
	rows    []string
	notes   []string
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func (r *report) row(mode, what, pier, flannel, ratio, target string) {
	r.rows = append(r.rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s |", mode, what, pier, flannel, ratio, target))
}

func (r *report) add(mode string, p, f result) {
	pa, fa, pd, fd := median(p.add), median(f.add), median(p.del), median(f.del)
	r.row(mode, "pod ADD (CNI exec, median of 30, interleaved)", ms(pa), ms(fa), ratio(float64(pa), float64(fa)), "≤ 0.6×")
	r.row(mode, "pod DEL (CNI exec, median of 30, interleaved)", ms(pd), ms(fd), ratio(float64(pd), float64(fd)), "≤ 0.8×")
	r.row(mode, "cross-node RTT (ping: median of 3 rounds of 20)", fmt.Sprintf("%.3f ms", p.rttCross), fmt.Sprintf("%.3f ms", f.rttCross), ratio(p.rttCross, f.rttCross), "≤ 1.0×")
	target := "≥ 1.0×"
	if mode == "host-gw" {
		target = "≥ 1.2×"
	}
	r.row(mode, "iperf3 cross-node (median of 3 alternating runs of 3 s)", fmt.Sprintf("%.1f Gbit/s", p.tputCross), fmt.Sprintf("%.1f Gbit/s", f.tputCross), ratio(p.tputCross, f.tputCross), target)
	r.row(mode, "iperf3 same node", fmt.Sprintf("%.1f Gbit/s", p.tputSame), fmt.Sprintf("%.1f Gbit/s", f.tputSame), ratio(p.tputSame, f.tputSame), "")
	r.row(mode, "new node routed on the others", ms(p.newNode), ms(f.newNode), ratio(float64(p.newNode), float64(f.newNode)), "≤ 0.5 s")
	r.row(mode, "deleted Node unrouted", ms(p.goneNode), ms(f.goneNode), ratio(float64(p.goneNode), float64(f.goneNode)), "≤ 100 ms")
	r.row(mode, "pods started per second, API server down (1 / mean ADD)", fmt.Sprintf("%.0f", p.apiDownRate), fmt.Sprintf("%.0f", f.apiDownRate), ratio(p.apiDownRate, f.apiDownRate), "")
	rss := "agent RSS, 2 nodes"
	target = ""
	if p.rssMiB > 0 && mode == "vxlan" {
		rss, target = "agent RSS, 1,000 more Node objects routed", "pierd ≤ 30 MiB"
	}
	r.row(mode, rss, fmt.Sprintf("%.1f MiB", p.rssMiB), fmt.Sprintf("%.1f MiB", f.rssMiB), "", target)
	r.notes = append(r.notes, fmt.Sprintf("%s: new node timed %s for Pier, %s for flannel.", mode, p.newNodeNote, f.newNodeNote))
}

func (r *report) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s; %d CPUs; %s; flanneld %s (kube subnet manager) with its CNI plugin's delegate (reference bridge + host-local); Pier's pierd --datastore kubernetes.\n\n",
		r.started.UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), runtime.Version(), FlannelVersion)
	b.WriteString("| mode | what | Pier | flannel | Pier/flannel | target |\n|---|---|---|---|---|---|\n")
	for _, row := range r.rows {
		b.WriteString(row + "\n")
	}
	b.WriteString("\n")
	for _, n := range r.notes {
		b.WriteString(n + "\n")
	}
	return b.String()
}

// write logs the tables and, with PIER_BENCH_OUT, puts them between the
// markers of that file.
func (r *report) write(t *testing.T) {
	text := r.text()
	t.Logf("\n%s", text)
	path := os.Getenv("PIER_BENCH_OUT")
	if path == "" {
		return
	}
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the markers %s … %s", path, beginMarker, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n" + text + s[j:]
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
