// Command bench measures Pier against the reference plugins (Debian's
// containernetworking-plugins: bridge + host-local) side by side in one run,
// inside a sandbox of its own: a node namespace where both plugins run, each
// with its own bridge and network, and container namespaces beside it.
//
// It reports whole-process ADD and DEL latency with N containers already
// attached, next to Pier's own VERSION call (the cost of starting the
// binary). Figures are medians and p90s of interleaved runs; a benchmark
// never fails on a figure, it reports.
//
//	go build -o bin/ ./cmd/... && go run ./bench -n 0,200 -runs 30
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

type impl struct {
	name    string
	bin     string
	cniPath string
	conf    string
}

type config struct {
	binDir string
	refDir string
	counts []int
	runs   int
	masq   bool
}

func main() {
	var c config
	var counts string
	flag.StringVar(&c.binDir, "bin-dir", "bin", "directory with the built pier binaries")
	flag.StringVar(&c.refDir, "ref-dir", "/usr/lib/cni", "directory with the reference plugins")
	flag.StringVar(&counts, "n", "0,200", "containers already attached, comma-separated")
	flag.IntVar(&c.runs, "runs", 30, "measured ADD/DEL pairs per implementation and N")
	flag.BoolVar(&c.masq, "masq", true, "ipMasq in both configs")
	flag.Parse()
	for _, s := range strings.Split(counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fatal("bad -n: %v", err)
		}
		c.counts = append(c.counts, n)
	}
	if err := run(c); err != nil {
		fatal("%v", err)
	}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// sandbox is the node namespace (this process's thread sits in it while
// plugins are started, so they inherit it) and the container namespaces.
type sandbox struct {
	node    string
	nodeNS  netns.NsHandle
	hostNS  netns.NsHandle
	ctrs    []string
	dataDir string
}

func run(c config) error {
	runtime.LockOSThread() // plugins are started from this thread, inside the node ns
	binDir, err := filepath.Abs(c.binDir)
	if err != nil {
		return err
	}
	sb, err := newSandbox()
	if err != nil {
		return err
	}
	defer sb.close()
	masq := strconv.FormatBool(c.masq)
	impls := []impl{
		{"pier", filepath.Join(binDir, "pier"), binDir, fmt.Sprintf(`{"cniVersion":"0.4.0","name":"bench-pier","type":"pier","bridge":"pb0","isGateway":true,"ipMasq":%s,"ipam":{"type":"pier-ipam","subnet":"10.60.0.0/16","dataDir":%q}}`, masq, sb.dataDir)},
		{"reference", filepath.Join(c.refDir, "bridge"), c.refDir, fmt.Sprintf(`{"cniVersion":"0.4.0","name":"bench-ref","type":"bridge","bridge":"rb0","isGateway":true,"ipMasq":%s,"ipam":{"type":"host-local","subnet":"10.61.0.0/16","dataDir":%q}}`, masq, sb.dataDir)},
	}
	version := sb.timeVersion(impls[0], c.runs)
	fmt.Printf("machine: %d CPUs, %s; ipMasq=%v; %d runs per cell\n", runtime.NumCPU(), kernel(), c.masq, c.runs)
	fmt.Printf("pier VERSION (binary start): median %s\n\n", ms(median(version)))
	fmt.Printf("%-5s %-4s %-10s %10s %10s\n", "N", "op", "impl", "median", "p90")
	attached := 0
	for _, n := range c.counts {
		for ; attached < n; attached++ {
			for _, im := range impls {
				if _, err := sb.add(im, fmt.Sprintf("pre-%d", attached)); err != nil {
					return err
				}
			}
		}
		if err := sb.measure(impls, n, c.runs, median(version)); err != nil {
			return err
		}
	}
	return nil
}

func (sb *sandbox) measure(impls []impl, n, runs int, version time.Duration) error {
	adds := map[string][]time.Duration{}
	dels := map[string][]time.Duration{}
	for r := range runs {
		order := impls
		if r%2 == 1 {
			order = []impl{impls[1], impls[0]}
		}
		for _, im := range order {
			id := fmt.Sprintf("m-%d-%d", n, r)
			d, err := sb.add(im, id)
			if err != nil {
				return err
			}
			adds[im.name] = append(adds[im.name], d)
			d, err = sb.del(im, id)
			if err != nil {
				return err
			}
			dels[im.name] = append(dels[im.name], d)
		}
	}
	for _, op := range []struct {
		name string
		m    map[string][]time.Duration
	}{{"ADD", adds}, {"DEL", dels}} {
		for _, im := range impls {
			fmt.Printf("%-5d %-4s %-10s %10s %10s\n", n, op.name, im.name, ms(median(op.m[im.name])), ms(p90(op.m[im.name])))
		}
		ratio := float64(median(op.m["pier"])) / float64(median(op.m["reference"]))
		fmt.Printf("%-5d %-4s pier/reference = %.2f×; pier/VERSION = %.2f×\n", n, op.name, ratio, float64(median(op.m["pier"]))/float64(version))
	}
	return nil
}

func newSandbox() (*sandbox, error) {
	sb := &sandbox{node: fmt.Sprintf("pb-node-%d", os.Getpid())}
	var err error
	if sb.hostNS, err = netns.Get(); err != nil {
		return nil, err
	}
	if sb.dataDir, err = os.MkdirTemp("", "pier-bench-"); err != nil {
		return nil, err
	}
	if err := ipNetns("add", sb.node); err != nil {
		return nil, err
	}
	if sb.nodeNS, err = netns.GetFromName(sb.node); err != nil {
		return nil, err
	}
	if err := netns.Set(sb.nodeNS); err != nil {
		return nil, err
	}
	return sb, nil
}

// close leaves the node namespace and removes everything the run made.
func (sb *sandbox) close() {
	if err := netns.Set(sb.hostNS); err != nil {
		fmt.Fprintln(os.Stderr, "bench: cannot return to the host namespace:", err)
	}
	for _, c := range sb.ctrs {
		_ = ipNetns("del", c) // best effort: report below if any remain
	}
	if err := ipNetns("del", sb.node); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	_ = os.RemoveAll(sb.dataDir)
}

func (sb *sandbox) add(im impl, id string) (time.Duration, error) {
	name := fmt.Sprintf("pb-%d-%s-%s", os.Getpid(), im.name[:1], id)
	if err := ipNetns("add", name); err != nil {
		return 0, err
	}
	sb.ctrs = append(sb.ctrs, name)
	return sb.exec(im, "ADD", id, "/var/run/netns/"+name)
}

func (sb *sandbox) del(im impl, id string) (time.Duration, error) {
	name := fmt.Sprintf("pb-%d-%s-%s", os.Getpid(), im.name[:1], id)
	d, err := sb.exec(im, "DEL", id, "/var/run/netns/"+name)
	if err == nil {
		err = ipNetns("del", name)
		sb.ctrs = slices.DeleteFunc(sb.ctrs, func(s string) bool { return s == name })
	}
	return d, err
}

// exec runs one plugin process from this thread (in the node namespace) and
// returns its wall time.
func (sb *sandbox) exec(im impl, verb, id, netnsPath string) (time.Duration, error) {
	cmd := exec.Command(im.bin)
	cmd.Env = []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=eth0", "CNI_PATH=" + im.cniPath, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = strings.NewReader(im.conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s %s %s: %v: %s", im.name, verb, id, err, out.String())
	}
	return d, nil
}

func (sb *sandbox) timeVersion(im impl, runs int) []time.Duration {
	var ds []time.Duration
	for range runs {
		cmd := exec.Command(im.bin)
		cmd.Env = []string{"CNI_COMMAND=VERSION"}
		start := time.Now()
		if err := cmd.Run(); err == nil {
			ds = append(ds, time.Since(start))
		}
	}
	return ds
}

func ipNetns(verb, name string) error {
	// ip netns add/del act on /var/run/netns and the mount table, not on the
	// calling thread's network namespace, so running them from the node's
	// thread is fine.
	if out, err := exec.Command("ip", "netns", verb, name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns %s %s: %v: %s", verb, name, err, out)
	}
	return nil
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

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown kernel"
	}
	return "Linux " + strings.TrimSpace(string(b))
}
