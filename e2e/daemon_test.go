package e2e

// Daemon mode: the plugins allocate through pierd ("ipam.daemonSocket").
// Each test starts its own pierd as a child process (metrics off, socket
// and data dir in temp dirs) and stops or kills only that process.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipamrpc"
	"github.com/pier-cni/pier/internal/testnet"
)

// pierdProc is a pierd child process of the test.
type pierdProc struct {
	t               *testing.T
	bin             string
	socket, dataDir string
	nsPath          string // network namespace to start it in; "" keeps the test's
	cmd             *exec.Cmd
	stderr          *bytes.Buffer
	client          *ipamrpc.Client
}

// startPierd starts pierd and waits until it answers. It is killed at the
// end of the test if still running.
func startPierd(t *testing.T, nsPath string) *pierdProc {
	t.Helper()
	dir := t.TempDir()
	p := &pierdProc{
		t: t, bin: filepath.Join(testnet.Binaries(t), "pierd"), nsPath: nsPath,
		socket: filepath.Join(dir, "run", "pierd.sock"), dataDir: filepath.Join(dir, "data"),
	}
	client, err := ipamrpc.Dial(p.socket)
	if err != nil {
		t.Fatal(err)
	}
	p.client = client
	t.Cleanup(func() {
		p.kill()
		client.Close()
	})
	p.start()
	return p
}

func (p *pierdProc) start() {
	p.t.Helper()
	// pierd trusts its own uid, so a test run as another user needs no --allow-uid.
	p.cmd = exec.Command(p.bin, "--socket", p.socket, "--data-dir", p.dataDir, "--metrics-addr", "")
	p.stderr = new(bytes.Buffer)
	p.cmd.Stderr = p.stderr
	var err error
	if p.nsPath != "" {
		err = testnet.StartIn(p.nsPath, p.cmd)
	} else {
		err = p.cmd.Start()
	}
	if err != nil {
		p.t.Fatalf("start pierd: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := p.client.Daemon(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pierd does not answer: %v\n%s", err, p.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill9 kills pierd with SIGKILL, as a crash would.
func (p *pierdProc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill() // our own child; already gone is fine
	_ = p.cmd.Wait()         // reaps it; its exit status is a kill
	p.cmd = nil
}

// term sends SIGTERM and returns pierd's exit code.
func (p *pierdProc) term() int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		p.cmd = nil
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			p.t.Fatal(err)
		}
		return 0
	case <-time.After(15 * time.Second):
		p.t.Fatalf("pierd did not stop on SIGTERM\n%s", p.stderr)
		return -1
	}
}

func (p *pierdProc) leases(network string) []string {
	p.t.Helper()
	nets, err := p.client.Leases(context.Background(), network)
	if err != nil {
		p.t.Fatal(err)
	}
	var out []string
	for _, n := range nets {
		for _, l := range n.Leases {
			out = append(out, l.Addr.String()+" "+l.Owner.String())
		}
	}
	return out
}

func daemonConf(socket string) string {
	return fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "dmnet", "type": "pier",
  "bridge": "pier-d0", "isGateway": true, "ipMasq": true,
  "ipam": { "type": "pier-ipam", "subnet": "10.47.0.0/24", "daemonSocket": %q,
            "routes": [ { "dst": "0.0.0.0/0" } ] } }`, socket)
}

// TestDaemonModeLifecycle: ADD, CHECK, GC and DEL through pierd, in a
// sandbox, leave what local mode leaves, with the reservations in pierd's
// data dir.
func TestDaemonModeLifecycle(t *testing.T) {
	n := newNode(t)
	p := startPierd(t, n.sb.Node.Path)
	conf := daemonConf(p.socket)
	c1, c2 := n.container("dm-1"), n.container("dm-2")
	out1 := n.mustAdd(c1, conf)
	checkResultVersion(t, "1.1.0", out1, "10.47.0.2/24", "10.47.0.1")
	checkResultVersion(t, "1.1.0", n.mustAdd(c2, conf), "10.47.0.3/24", "10.47.0.1")
	if got := ipJSON[[]ipLink](t, c1.ns, "addr", "show", "dev", "eth0")[0].addrs("inet"); !slices.Equal(got, []string{"10.47.0.2/24"}) {
		t.Fatalf("dm-1 eth0: %v", got)
	}
	c1.ns.MustRun(t, "ping", "-c1", "-W2", "10.47.0.3")
	if got := p.leases("dmnet"); !slices.Equal(got, []string{"10.47.0.2 dm-1/eth0", "10.47.0.3 dm-2/eth0"}) {
		t.Fatalf("pierd's leases: %v", got)
	}
	if files := storeFiles(t, p.dataDir); !slices.Contains(files, "dmnet/10.47.0.2") {
		t.Fatalf("pierd's store lacks the reservation: %v", files)
	}

	if r := n.call("CHECK", c1, withPrevResult(conf, out1)); r.ExitCode != 0 {
		t.Fatalf("CHECK: %s %s", r.Stdout, r.Stderr)
	}
	if r := n.call("GC", attachment{}, withValidAttachments(conf, c1)); r.ExitCode != 0 {
		t.Fatalf("GC: %s %s", r.Stdout, r.Stderr)
	}
	if got := p.leases("dmnet"); !slices.Equal(got, []string{"10.47.0.2 dm-1/eth0"}) {
		t.Fatalf("after GC keeping dm-1: %v", got)
	}
	if ports := bridgePorts(t, n.sb.Node, "pier-d0"); len(ports) != 1 || !strings.Contains(ports[0].IfAlias, ":dm-1:") {
		t.Fatalf("after GC: bridge ports %+v", ports)
	}
	if elems := masqElements(t, n.sb.Node, "dmnet-masq4"); len(elems) != 1 || !strings.Contains(elems[0], "dm-1") {
		t.Fatalf("after GC: masquerade %v", elems)
	}
	n.mustDel(c1, conf)
	n.mustDel(c1, conf) // idempotent
	if got := p.leases("dmnet"); len(got) != 0 {
		t.Fatalf("after DEL: %v", got)
	}
	if ports := bridgePorts(t, n.sb.Node, "pier-d0"); len(ports) != 0 {
		t.Fatalf("after DEL: ports %+v", ports)
	}
	if code := p.term(); code != 0 {
		t.Fatalf("pierd exit %d on SIGTERM\n%s", code, p.stderr)
	}
	if _, err := os.Lstat(p.socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
}

// TestDaemonDown: with pierd stopped, ADD fails with code 11 within 2 s
// and leaves nothing, STATUS says 50, DEL fails with 11 and removes
// nothing (the policy: the runtime retries DEL); once pierd is back, the
// retried DEL succeeds.
func TestDaemonDown(t *testing.T) {
	n := newNode(t)
	p := startPierd(t, n.sb.Node.Path)
	conf := daemonConf(p.socket)
	c1, c2 := n.container("down-1"), n.container("down-2")
	n.mustAdd(c1, conf)
	if code := p.term(); code != 0 {
		t.Fatalf("pierd exit %d on SIGTERM", code)
	}

	start := time.Now()
	r := n.call("ADD", c2, conf)
	took := time.Since(start)
	cniError(t, r, cnierr.TryAgainLater)
	if took > 2*time.Second {
		t.Fatalf("ADD with pierd down took %v, want < 2 s", took)
	}
	if links := ipJSON[[]ipLink](t, c2.ns, "link", "show", "type", "veth"); len(links) != 0 {
		t.Fatalf("failed ADD left %+v", links)
	}
	cniError(t, n.call("STATUS", attachment{}, conf), cnierr.PluginNotAvailable)

	cniError(t, n.call("DEL", c1, conf), cnierr.TryAgainLater)
	if got := ipJSON[[]ipLink](t, c1.ns, "addr", "show", "dev", "eth0")[0].addrs("inet"); !slices.Equal(got, []string{"10.47.0.2/24"}) {
		t.Fatalf("DEL with pierd down changed down-1: %v", got)
	}
	if files := storeFiles(t, p.dataDir); !slices.Contains(files, "dmnet/10.47.0.2") {
		t.Fatalf("DEL with pierd down released the address: %v", files)
	}

	p.start()
	n.mustDel(c1, conf)
	if r := n.call("STATUS", attachment{}, conf); r.ExitCode != 0 {
		t.Fatalf("STATUS with pierd back: %s", r.Stdout)
	}
	n.mustAdd(c2, conf)
	n.mustDel(c2, conf)
	if got := p.leases("dmnet"); len(got) != 0 {
		t.Fatalf("leases left: %v", got)
	}
}

// TestPierdKilledDuringBurst: 50 concurrent pier-ipam ADDs in daemon mode;
// pierd is SIGKILLed in the middle and restarted at once. Every ADD
// succeeds or fails with code 11; no address is handed out twice; after the
// runtime's DEL of the failed ones, pierd holds exactly the successful
// ADDs' addresses. pier-ipam touches no network, so no sandbox is needed.
func TestPierdKilledDuringBurst(t *testing.T) {
	p := startPierd(t, "")
	bin := filepath.Join(testnet.Binaries(t), "pier-ipam")
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"burst","ipam":{"type":"pier-ipam","subnet":"10.48.0.0/24","daemonSocket":%q}}`, p.socket)
	const n = 50
	type outcome struct {
		id   string
		run  testnet.PluginRun
		addr netip.Addr
	}
	results := make([]outcome, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("burst-%02d", i)
			results[i] = outcome{id: id, run: runIPAM(bin, "ADD", id, conf)}
		}()
	}
	// Kill once some ADDs are through, the rest still coming.
	waitUntil(t, 10*time.Second, func() bool { return countRecords(p.dataDir, "burst") >= 8 })
	before := countRecords(p.dataDir, "burst")
	p.kill()
	p.start()
	wg.Wait()

	var ok, retry int
	seen := map[netip.Addr]string{}
	for i, r := range results {
		switch r.run.ExitCode {
		case 0:
			var res current.Result
			if err := json.Unmarshal([]byte(r.run.Stdout), &res); err != nil || len(res.IPs) != 1 {
				t.Fatalf("%s: result %q: %v", r.id, r.run.Stdout, err)
			}
			a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
			a = a.Unmap()
			if other, dup := seen[a]; dup {
				t.Fatalf("%s and %s both got %s", other, r.id, a)
			}
			seen[a] = r.id
			results[i].addr = a
			ok++
		default:
			msg := cniError(t, r.run, cnierr.TryAgainLater)
			if retry == 0 {
				t.Logf("%s: %s", r.id, msg)
			}
			retry++
			// The runtime DELs a failed ADD.
			if d := runIPAM(bin, "DEL", r.id, conf); d.ExitCode != 0 {
				t.Fatalf("DEL %s: %s %s", r.id, d.Stdout, d.Stderr)
			}
		}
	}
	t.Logf("%d records before the kill; %d ADDs succeeded, %d failed with code 11", before, ok, retry)
	var want []string
	for _, r := range results {
		if r.addr.IsValid() {
			want = append(want, r.addr.String()+" "+r.id+"/eth0")
		}
	}
	slices.SortFunc(want, func(a, b string) int {
		return netip.MustParseAddr(strings.Fields(a)[0]).Compare(netip.MustParseAddr(strings.Fields(b)[0]))
	})
	if got := p.leases("burst"); !slices.Equal(got, want) {
		t.Fatalf("pierd holds\n%v\nwant exactly the successful ADDs'\n%v", got, want)
	}
	// Every owner index matches its records: a GC keeping the successful
	// owners releases nothing.
	valid := `"cni.dev/valid-attachments":[`
	for i, r := range results {
		if r.addr.IsValid() {
			if i > 0 && !strings.HasSuffix(valid, "[") {
				valid += ","
			}
			valid += fmt.Sprintf(`{"containerID":%q,"ifname":"eth0"}`, r.id)
		}
	}
	gcConf := strings.Replace(conf, `"name":"burst",`, `"name":"burst",`+valid+`],`, 1)
	if r := runIPAM(bin, "GC", "", gcConf); r.ExitCode != 0 {
		t.Fatalf("GC: %s %s", r.Stdout, r.Stderr)
	}
	if got := p.leases("burst"); !slices.Equal(got, want) {
		t.Fatalf("GC keeping the successful ADDs changed the leases: %v", got)
	}
}

// runIPAM runs pier-ipam in the test's namespace (it touches no network).
func runIPAM(bin, verb, id, conf string) testnet.PluginRun {
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND=" + verb, "CNI_PATH=" + filepath.Dir(bin)}
	if id != "" {
		cmd.Env = append(cmd.Env, "CNI_CONTAINERID="+id, "CNI_NETNS=/var/run/netns/pier-test-unused", "CNI_IFNAME=eth0")
	}
	cmd.Stdin = strings.NewReader(conf)
	cmd.Stdout, cmd.Stderr = new(bytes.Buffer), new(bytes.Buffer)
	return testnet.Outcome(cmd, cmd.Run())
}

// countRecords counts the address records of network in a data dir.
func countRecords(dataDir, network string) int {
	entries, err := os.ReadDir(filepath.Join(dataDir, network))
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			n++
		}
	}
	return n
}

func waitUntil(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestMeasureDaemonVsEmbedded reports (never fails on) the whole-process
// ADD and DEL latency of `pier` in daemon mode next to embedded mode, in one
// run inside a sandbox node namespace: 30 interleaved ADD/DEL pairs each,
// after 3 of warm-up. It runs only with PIER_MEASURE=1:
//
//	PIER_MEASURE=1 go test -count=1 -run TestMeasureDaemonVsEmbedded -v ./e2e/
func TestMeasureDaemonVsEmbedded(t *testing.T) {
	if os.Getenv("PIER_MEASURE") == "" {
		t.Skip("a measurement: set PIER_MEASURE=1")
	}
	n := newNode(t)
	p := startPierd(t, n.sb.Node.Path)
	bin := filepath.Join(n.binDir, "pier")
	confs := map[string]string{
		"embedded": fmt.Sprintf(`{"cniVersion":"1.0.0","name":"me","type":"pier","bridge":"pe0","isGateway":true,"ipMasq":true,
			"ipam":{"type":"pier-ipam","subnet":"10.70.0.0/16","dataDir":%q}}`, n.dataDir),
		"daemon": fmt.Sprintf(`{"cniVersion":"1.0.0","name":"md","type":"pier","bridge":"pd0","isGateway":true,"ipMasq":true,
			"ipam":{"type":"pier-ipam","subnet":"10.71.0.0/16","daemonSocket":%q}}`, p.socket),
	}
	ctrs := map[string]*testnet.NS{"embedded": n.sb.Container(), "daemon": n.sb.Container()}
	timed := func(verb, mode, id string) time.Duration {
		env := []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + ctrs[mode].Path, "CNI_IFNAME=eth0", "CNI_PATH=" + n.binDir}
		start := time.Now()
		cmd, err := n.sb.Start(bin, env, []byte(confs[mode]))
		if err != nil {
			t.Fatal(err)
		}
		r := testnet.Outcome(cmd, cmd.Wait())
		took := time.Since(start)
		if r.ExitCode != 0 {
			t.Fatalf("%s %s: %s %s", verb, mode, r.Stdout, r.Stderr)
		}
		return took
	}
	version := func() time.Duration {
		start := time.Now()
		cmd, err := n.sb.Start(bin, []string{"CNI_COMMAND=VERSION"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	const warmup, runs = 3, 30
	adds, dels := map[string][]time.Duration{}, map[string][]time.Duration{}
	var versions []time.Duration
	for i := range warmup + runs {
		order := []string{"embedded", "daemon"}
		if i%2 == 1 {
			order = []string{"daemon", "embedded"}
		}
		v := version()
		for _, mode := range order {
			id := fmt.Sprintf("m-%s-%d", mode, i)
			a := timed("ADD", mode, id)
			d := timed("DEL", mode, id)
			if i >= warmup {
				adds[mode], dels[mode] = append(adds[mode], a), append(dels[mode], d)
			}
		}
		if i >= warmup {
			versions = append(versions, v)
		}
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	t.Logf("pier VERSION: median %v", med(versions))
	for _, mode := range []string{"embedded", "daemon"} {
		t.Logf("%-8s ADD median %v, DEL median %v", mode, med(adds[mode]), med(dels[mode]))
	}
	t.Logf("daemon/embedded: ADD %.2f×, DEL %.2f×",
		float64(med(adds["daemon"]))/float64(med(adds["embedded"])), float64(med(dels["daemon"]))/float64(med(dels["embedded"])))
}
