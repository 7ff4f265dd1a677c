package pierd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
	"github.com/pier-cni/pier/internal/netns"
	"github.com/pier-cni/pier/internal/testnet"
)

func testConf(t *testing.T, socket string) *config.IPAMConfig {
	conf, err := config.LoadIPAM([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net1",
		"ipam":{"type":"pier-ipam","daemonSocket":%q,"subnet":"10.30.0.0/29"}}`, socket)), "")
	if err != nil {
		if t == nil {
			panic(err)
		}
		t.Fatal(err)
	}
	return conf
}

// start runs a daemon for the test (pierd trusts its own uid, so a test
// run by another user than root calls it too). A daemon with a metrics
// listener is started only outside the host's network namespace (see
// inNetns): the listener binds 127.0.0.1 of the namespace it is made in.
func start(t *testing.T, o Options) *Daemon {
	t.Helper()
	if o.MetricsAddr != "" && !inSandboxNode() {
		t.Fatal("pierd's metrics listener would bind 127.0.0.1 outside a sandbox namespace (the host's): run the test in a namespace of its own (inNetns)")
	}
	if o.DataDir == "" {
		o.DataDir = filepath.Join(t.TempDir(), "data")
	}
	d, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(t, d) })
	return d
}

func stop(t *testing.T, d *Daemon) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := d.Stop(ctx); err != nil {
		t.Errorf("stop: %v", err)
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestSocketPermissions(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the default modes apply to a root pierd")
	}
	socket := filepath.Join(t.TempDir(), "run", "pierd.sock")
	d := start(t, Options{Socket: socket})
	if m := mode(t, filepath.Dir(socket)); m != 0o700 {
		t.Errorf("socket dir mode %o, want 700", m)
	}
	if m := mode(t, socket); m != 0o600 {
		t.Errorf("socket mode %o, want 600", m)
	}
	stop(t, d)
	if _, err := os.Lstat(socket); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}

	// --allow-uid opens the modes; SO_PEERCRED is the gate then.
	start(t, Options{Socket: socket, Allow: []Grant{{UID: 12345, Networks: []string{"net1"}}}})
	if m := mode(t, filepath.Dir(socket)); m != 0o711 {
		t.Errorf("socket dir mode with --allow-uid %o, want 711", m)
	}
	if m := mode(t, socket); m != 0o666 {
		t.Errorf("socket mode with --allow-uid %o, want 666", m)
	}
}

func TestStartRefusals(t *testing.T) {
	t.Run("second pierd on the same socket", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "pierd.sock")
		start(t, Options{Socket: socket})
		_, err := Start(Options{Socket: socket, DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "another pierd") {
			t.Fatalf("want refusal, got %v", err)
		}
	})
	t.Run("live socket of another process", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "pierd.sock")
		l, err := net.Listen("unix", socket)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, err = Start(Options{Socket: socket, DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "live socket") {
			t.Fatalf("want refusal, got %v", err)
		}
		if _, err := os.Lstat(socket); err != nil {
			t.Fatalf("the live socket was touched: %v", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "pierd.sock")
		if err := os.WriteFile(socket, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Start(Options{Socket: socket, DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("want refusal, got %v", err)
		}
	})
	t.Run("shared directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
			t.Fatal(err)
		}
		_, err := Start(Options{Socket: filepath.Join(dir, "pierd.sock"), DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "sticky") {
			t.Fatalf("want refusal, got %v", err)
		}
	})
}

// TestStaleSocket: a socket left by a killed pierd (nobody listens) is
// replaced.
func TestStaleSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "pierd.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // the socket file stays, as after a kill -9
	if _, err := os.Lstat(socket); err != nil {
		t.Fatal(err)
	}
	start(t, Options{Socket: socket})
	c := lite.New(socket)
	defer c.Close()
	if err := c.Status(context.Background(), testConf(t, socket)); err != nil {
		t.Fatalf("pierd over a stale socket does not serve: %v", err)
	}
}

func copyExecutable(t *testing.T, dst string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDrain: a call in flight when Stop begins completes; new connections
// are refused from then on.
func TestDrain(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "pierd.sock")
	dataDir := filepath.Join(dir, "data")
	d := start(t, Options{Socket: socket, DataDir: dataDir})
	conf := testConf(t, socket)
	c := lite.New(socket)
	defer c.Close()
	if _, err := c.Allocate(context.Background(), conf, ipam.Owner{ContainerID: "c0", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// Hold the network's store lock, as a slow writer would: the next
	// Allocate waits inside pierd.
	lock, err := os.OpenFile(filepath.Join(dataDir, "net1", "lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	type result struct {
		addr string
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		c := lite.New(socket)
		defer c.Close()
		res, err := c.Allocate(context.Background(), conf, ipam.Owner{ContainerID: "c1", IfName: "eth0"})
		if err != nil {
			inflight <- result{err: err}
			return
		}
		inflight <- result{addr: res[0].Prefix.String()}
	}()
	waitFor(t, "the call to reach pierd", func() bool { return d.inFlight() > 0 })

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- d.Stop(ctx)
	}()
	waitFor(t, "the socket to close", func() bool {
		_, err := os.Lstat(socket)
		return os.IsNotExist(err)
	})
	select {
	case r := <-inflight:
		t.Fatalf("the in-flight call ended before its lock was free: %+v", r)
	default:
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if r := <-inflight; r.err != nil || r.addr == "" {
		t.Fatalf("in-flight call during drain: %+v", r)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// inFlight is how many calls the daemon is serving, for tests.
func (d *Daemon) inFlight() int64 { return d.calls.Load() }

func TestMetricsAndHealthz(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dir := t.TempDir()
	socket := filepath.Join(dir, "pierd.sock")
	d := start(t, Options{Socket: socket, DataDir: filepath.Join(dir, "data"), MetricsAddr: "127.0.0.1:0"})
	conf := testConf(t, socket)
	c := lite.New(socket)
	defer c.Close()
	ctx := context.Background()
	for _, id := range []string{"c1", "c2"} {
		if _, err := c.Allocate(ctx, conf, ipam.Owner{ContainerID: id, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Release(ctx, conf, ipam.Owner{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Check(ctx, conf, ipam.Owner{ContainerID: "nobody", IfName: "eth0"}); cnierr.CodeOf(err) != cnierr.UnknownContainer {
		t.Fatalf("check: %v", err)
	}
	body := get(t, "http://"+d.MetricsAddr()+"/metrics", http.StatusOK)
	for _, want := range []string{
		`pierd_ipam_allocations_total{network="net1"} 2`,
		`pierd_ipam_releases_total{network="net1"} 1`,
		`pierd_ipam_pool_size{network="net1",range="10.30.0.1-10.30.0.6",range_set="0"} 5`,
		`pierd_ipam_pool_used{network="net1",range="10.30.0.1-10.30.0.6",range_set="0"} 1`,
		`pierd_request_duration_seconds_count{method="Allocate"} 2`,
		`pierd_request_errors_total{code="3",method="Check"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if got := get(t, "http://"+d.MetricsAddr()+"/healthz", http.StatusOK); got != "ok\n" {
		t.Errorf("healthz: %q", got)
	}
	d.draining.Store(true)
	get(t, "http://"+d.MetricsAddr()+"/healthz", http.StatusServiceUnavailable)
	d.draining.Store(false)
}

func get(t *testing.T, url string, wantStatus int) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: %d, want %d: %s", url, resp.StatusCode, wantStatus, b)
	}
	return string(b)
}

// TestClientForPierctl exercises the grpc-go client pierctl uses: leases,
// pool usage, readiness, the daemon's status, and pierd down.
func TestClientForPierctl(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "pierd.sock")
	dataDir := filepath.Join(dir, "data")
	d := start(t, Options{Socket: socket, DataDir: dataDir, Version: "test"})
	conf := testConf(t, socket)
	lc := lite.New(socket)
	defer lc.Close()
	ctx := context.Background()
	for _, id := range []string{"c1", "c2", "c3", "c4", "c5"} {
		if _, err := lc.Allocate(ctx, conf, ipam.Owner{ContainerID: id, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	lc.Close()

	c, err := ipamrpc.Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Reservations(ctx, conf)
	if err != nil || len(res) != 5 || res[0].Addr.String() != "10.30.0.2" || res[0].Owner.ContainerID != "c1" || res[0].RangeSet != 0 {
		t.Fatalf("Reservations: %v %v", res, err)
	}
	nets, err := c.Leases(ctx, "")
	if err != nil || len(nets) != 1 || nets[0].Name != "net1" || len(nets[0].Pools) != 1 || nets[0].Pools[0].Size != 5 || nets[0].Pools[0].Used != 5 {
		t.Fatalf("Leases: %+v %v", nets, err)
	}
	if err := c.Ready(ctx, conf); cnierr.CodeOf(err) != cnierr.PluginNotAvailable || !strings.Contains(err.Error(), "no free address") {
		t.Fatalf("Ready on a full pool: %v", err)
	}
	ds, err := c.Daemon(ctx)
	if err != nil || ds.Version != "test" || ds.DataDir != dataDir || len(ds.Networks) != 1 || ds.Networks[0].Ready || ds.Networks[0].Leases != 5 {
		t.Fatalf("Daemon: %+v %v", ds, err)
	}

	// Restarted, pierd still knows the network's ranges (recorded on disk).
	stop(t, d)
	start(t, Options{Socket: socket, DataDir: dataDir})
	ds, err = c.Daemon(ctx)
	if err != nil || len(ds.Networks) != 1 || len(ds.Networks[0].Pools) != 1 || ds.Networks[0].Pools[0].Used != 5 {
		t.Fatalf("Daemon after restart: %+v %v", ds, err)
	}

	down, err := ipamrpc.Dial(filepath.Join(dir, "none.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	if _, err := down.Daemon(ctx); cnierr.CodeOf(err) != cnierr.TryAgainLater {
		t.Fatalf("Daemon with pierd down: %v, want code 11", err)
	}
	if err := down.Ready(ctx, conf); cnierr.CodeOf(err) != cnierr.PluginNotAvailable {
		t.Fatalf("Ready with pierd down: %v, want code 50", err)
	}
}

// inNetns re-runs the calling test in a child process inside a network
// namespace of its own (testnet's node namespace, removed afterwards):
// pierd's metrics listener is bound to 127.0.0.1 of the namespace it is
// created in, and the test's HTTP client and helper processes must reach it
// there, never on the host's loopback. In the parent it returns false once
// the child is done, and the test returns; in the child it returns true.
func inNetns(t *testing.T) bool {
	t.Helper()
	return testnet.New(t).InNode(t)
}

// inSandboxNode reports whether the calling thread is in a sandbox node
// namespace that testnet made.
func inSandboxNode() bool {
	paths, _ := filepath.Glob("/var/run/netns/pt-node-*") // a malformed pattern is the only error
	for _, p := range paths {
		if same, err := netns.IsCurrent(p); err == nil && same {
			return true
		}
	}
	return false
}
