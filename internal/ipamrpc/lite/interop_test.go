package lite_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
	"github.com/pier-cni/pier/internal/pierd"
)

// The lean client against pierd's stock grpc-go server, over a real socket.

type daemon struct {
	socket, dataDir string
	d               *pierd.Daemon
}

func startDaemon(t testing.TB, socket, dataDir string) *daemon {
	t.Helper()
	d, err := pierd.Start(pierd.Options{Socket: socket, DataDir: dataDir}) // pierd trusts its own uid
	if err != nil {
		t.Fatal(err)
	}
	dm := &daemon{socket: socket, dataDir: dataDir, d: d}
	t.Cleanup(func() { dm.stop(t) })
	return dm
}

func (dm *daemon) stop(t testing.TB) { dm.stopWithin(t, 5*time.Second) }

// stopWithin stops pierd, cutting calls and connections still open after
// drain: grpc-go's graceful stop waits for each client to acknowledge its
// GOAWAY ping, which an idle lite client (that reads only during a call)
// never does; plugin processes close their connection when they exit.
func (dm *daemon) stopWithin(t testing.TB, drain time.Duration) {
	if dm.d == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := dm.d.Stop(ctx); err != nil {
		t.Errorf("stop pierd: %v", err)
	}
	dm.d = nil
}

func newDaemon(t testing.TB) *daemon {
	dir := t.TempDir()
	return startDaemon(t, filepath.Join(dir, "run", "pierd.sock"), filepath.Join(dir, "data"))
}

func loadConf(t testing.TB, socket, ipamJSON, envArgs string) *config.IPAMConfig {
	t.Helper()
	var sock string
	if socket != "" {
		sock = fmt.Sprintf(`"daemonSocket":%q,`, socket)
	}
	conf, err := config.LoadIPAM([]byte(`{"cniVersion":"1.0.0","name":"net1","ipam":{"type":"pier-ipam",`+sock+ipamJSON+`}}`), envArgs)
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

func own(id string) ipam.Owner { return ipam.Owner{ContainerID: id, IfName: "eth0"} }

// allocator is what a step of the script sees of either mode: the calls
// of ipam.Allocator, each rendered as a string (ADD as the plugin's result).
type allocator struct{ a ipam.Allocator }

func (m allocator) Add(ctx context.Context, c *config.IPAMConfig, o ipam.Owner) (string, error) {
	r, err := ipam.AllocateResult(ctx, m.a, c, o)
	if err != nil {
		return "", err
	}
	return fmt.Sprint(r.IPs, r.Routes), nil
}

func (m allocator) Del(ctx context.Context, c *config.IPAMConfig, o ipam.Owner) (string, error) {
	n, err := m.a.Release(ctx, c, o)
	return fmt.Sprint(n, " released"), err
}

func (m allocator) Check(ctx context.Context, c *config.IPAMConfig, o ipam.Owner) (string, error) {
	a, err := m.a.Check(ctx, c, o)
	return fmt.Sprint(a), err
}

func (m allocator) GC(ctx context.Context, c *config.IPAMConfig, v []ipam.Owner) (string, error) {
	n, err := m.a.GC(ctx, c, v)
	return fmt.Sprint(n, " released"), err
}

func (m allocator) Status(ctx context.Context, c *config.IPAMConfig) error { return m.a.Status(ctx, c) }

func (m allocator) List(ctx context.Context, c *config.IPAMConfig) (string, error) {
	r, err := m.a.List(ctx, c)
	return fmt.Sprint(r), err
}

// TestSameSemanticsAsLocalMode runs one script of calls in local mode and
// in daemon mode and wants the same outcome at every step: results, CNI
// codes and messages.
func TestSameSemanticsAsLocalMode(t *testing.T) {
	dm := newDaemon(t)
	client := lite.New(dm.socket)
	defer client.Close()
	// A dual-stack network with a tiny IPv4 pool: 3 usable addresses.
	const ranges = `"ranges":[[{"subnet":"10.9.0.0/29","rangeStart":"10.9.0.2","rangeEnd":"10.9.0.4"}],[{"subnet":"fd00::/120"}]],"routes":[{"dst":"0.0.0.0/0"}]`
	type step struct {
		name string
		run  func(a allocator, conf func(env string) *config.IPAMConfig) (string, error)
	}
	ctx := context.Background()
	steps := []step{
		{"add c1", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf(""), own("c1"))
		}},
		{"add c1 again", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf(""), own("c1"))
		}},
		{"add c2 requesting .4", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf("IP=10.9.0.4"), own("c2"))
		}},
		{"add c3 requesting .4 (held)", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf("IP=10.9.0.4"), own("c3"))
		}},
		{"add c3 outside", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf("IP=10.99.0.4"), own("c3"))
		}},
		{"add c3", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf(""), own("c3"))
		}},
		{"status when full", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return "", a.Status(ctx, conf(""))
		}},
		{"add c4 when full", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf(""), own("c4"))
		}},
		{"check c4", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Check(ctx, conf(""), own("c4"))
		}},
		{"check c2", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Check(ctx, conf(""), own("c2"))
		}},
		{"bad owner", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf(""), ipam.Owner{ContainerID: "-x", IfName: "eth0"})
		}},
		{"del c1", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Del(ctx, conf(""), own("c1"))
		}},
		{"del c1 again", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Del(ctx, conf(""), own("c1"))
		}},
		{"add c4 after a release", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.Add(ctx, conf(""), own("c4"))
		}},
		{"gc keeping c2", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return a.GC(ctx, conf(""), []ipam.Owner{own("c2")})
		}},
		{"list", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) { return a.List(ctx, conf("")) }},
		{"status", func(a allocator, conf func(string) *config.IPAMConfig) (string, error) {
			return "", a.Status(ctx, conf(""))
		}},
	}
	localDir := t.TempDir()
	localConf := func(env string) *config.IPAMConfig {
		return loadConf(t, "", fmt.Sprintf(`"dataDir":%q,`, localDir)+ranges, env)
	}
	daemonConf := func(env string) *config.IPAMConfig { return loadConf(t, dm.socket, ranges, env) }
	for _, s := range steps {
		lres, lerr := s.run(allocator{ipam.NewLocal(localDir, ipam.LocalOptions{})}, localConf)
		dres, derr := s.run(allocator{client}, daemonConf)
		if lres != dres {
			t.Errorf("%s: local %q, daemon %q", s.name, lres, dres)
		}
		if lerr == nil != (derr == nil) || (lerr != nil && (cnierr.CodeOf(lerr) != cnierr.CodeOf(derr) || cnierr.ToCNI(lerr).Msg != cnierr.ToCNI(derr).Msg)) {
			t.Errorf("%s: local error %v (code %d), daemon error %v (code %d)", s.name, lerr, cnierr.CodeOf(lerr), derr, cnierr.CodeOf(derr))
		}
		t.Logf("%s: %s %v", s.name, dres, derr)
	}
}

// TestLargeMessages crosses HTTP/2's default 64 KiB windows and 16 KiB
// frames both ways: a GC listing thousands of valid attachments, and a List
// of hundreds of leases with long container IDs.
func TestLargeMessages(t *testing.T) {
	dm := newDaemon(t)
	c := lite.New(dm.socket)
	defer c.Close()
	ctx := context.Background()
	conf := loadConf(t, dm.socket, `"subnet":"10.20.0.0/20"`, "")
	long := strings.Repeat("a", 100)
	const n = 700
	var valid []ipam.Owner
	for i := range n {
		o := own(fmt.Sprintf("%s%04d", long, i))
		if _, err := c.Allocate(ctx, conf, o); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
		valid = append(valid, o)
	}
	for i := range 3000 {
		valid = append(valid, own(fmt.Sprintf("%sextra%05d", long, i)))
	}
	if n, err := c.GC(ctx, conf, valid); err != nil || n != 0 {
		t.Fatalf("GC with %d valid attachments: %d released, %v", len(valid), n, err)
	}
	res, err := c.List(ctx, conf)
	if err != nil || len(res) != n {
		t.Fatalf("List: %d reservations, %v", len(res), err)
	}
	if n, err := c.GC(ctx, conf, nil); err != nil || n != len(res) {
		t.Fatalf("GC of all: %d released, %v", n, err)
	}
	if res, err := c.List(ctx, conf); err != nil || len(res) != 0 {
		t.Fatalf("after GC of all: %d, %v", len(res), err)
	}
}

// TestRequestSizeLimit: the client sends without flow control, relying on
// pierd's windows (lite.ServerWindow) to hold any request up to
// lite.MaxRequest: a GC request just under it goes through, one over it is
// refused before anything is sent.
func TestRequestSizeLimit(t *testing.T) {
	dm := newDaemon(t)
	c := lite.New(dm.socket)
	defer c.Close()
	conf := loadConf(t, dm.socket, `"subnet":"10.20.0.0/24"`, "")
	id := strings.Repeat("f", 64) // a container ID as containerd makes them
	var valid []ipam.Owner
	for i := 0; len(valid)*(len(id)+16) < lite.MaxRequest-64<<10; i++ {
		valid = append(valid, own(fmt.Sprintf("%s%06d", id[:58], i)))
	}
	if _, err := c.GC(context.Background(), conf, valid); err != nil {
		t.Fatalf("GC listing %d attachments, just under the limit: %v", len(valid), err)
	}
	c.Close()
	dm.stop(t) // the refusal must not need pierd
	_, err := lite.New(dm.socket).GC(context.Background(), conf, append(valid, valid...))
	if cnierr.CodeOf(err) != cnierr.IOFailure || !strings.Contains(err.Error(), "more than the") {
		t.Fatalf("GC over the limit: %v (code %d), want code 5", err, cnierr.CodeOf(err))
	}
}

// TestUnreachable: no pierd: ADD fails with code 11, STATUS with code 50,
// both within the connect budget.
func TestUnreachable(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "none.sock")
	c := lite.New(socket)
	conf := loadConf(t, socket, `"subnet":"10.1.0.0/24"`, "")
	start := time.Now()
	_, err := c.Allocate(context.Background(), conf, own("c1"))
	if took := time.Since(start); cnierr.CodeOf(err) != cnierr.TryAgainLater || took > 2*time.Second {
		t.Fatalf("ADD: %v (code %d) after %v; want code 11 within 2 s", err, cnierr.CodeOf(err), took)
	}
	if err := c.Status(context.Background(), conf); cnierr.CodeOf(err) != cnierr.PluginNotAvailable {
		t.Fatalf("STATUS: %v, want code 50", err)
	}
	if _, err := c.Release(context.Background(), conf, own("c1")); cnierr.CodeOf(err) != cnierr.TryAgainLater {
		t.Fatalf("DEL: %v, want code 11", err)
	}
}

// TestSilentServer: something accepts on the socket but never speaks
// HTTP/2 (a wedged or stopped pierd): code 11 within the connect budget.
func TestSilentServer(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	conf := loadConf(t, socket, `"subnet":"10.1.0.0/24"`, "")
	start := time.Now()
	_, err = lite.New(socket).Allocate(context.Background(), conf, own("c1"))
	if took := time.Since(start); cnierr.CodeOf(err) != cnierr.TryAgainLater || took > 2*time.Second {
		t.Fatalf("ADD: %v (code %d) after %v; want code 11 within 2 s", err, cnierr.CodeOf(err), took)
	}
}

// TestRetryWhileStarting: a client that starts before pierd waits for it
// (within the connect budget) instead of failing.
func TestRetryWhileStarting(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "run", "pierd.sock")
	conf := loadConf(t, socket, `"subnet":"10.1.0.0/24"`, "")
	started := make(chan *daemon, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		started <- startDaemon(t, socket, filepath.Join(dir, "data"))
	}()
	c := lite.New(socket)
	res, err := c.Allocate(context.Background(), conf, own("c1"))
	c.Close()
	<-started
	if err != nil || len(res) != 1 {
		t.Fatalf("ADD while pierd starts: %v %v", res, err)
	}
}

// TestRestartBetweenCalls: one client, pierd restarted between its calls
// (the old connection is gone): the next call dials afresh.
func TestRestartBetweenCalls(t *testing.T) {
	dm := newDaemon(t)
	c := lite.New(dm.socket)
	defer c.Close()
	conf := loadConf(t, dm.socket, `"subnet":"10.1.0.0/24"`, "")
	first, err := c.Allocate(context.Background(), conf, own("c1"))
	if err != nil {
		t.Fatal(err)
	}
	dm.stopWithin(t, 100*time.Millisecond) // c keeps its connection open
	startDaemon(t, dm.socket, dm.dataDir)
	again, err := c.Allocate(context.Background(), conf, own("c1"))
	if err != nil || again[0] != first[0] {
		t.Fatalf("ADD after restart: %v %v, want %v", again, err, first[0])
	}
}

// TestWarm: a connection opened early serves the first call even when the
// call comes after the connect budget; with pierd down, Warm leaves the
// first call to dial (and wait for pierd) as usual.
func TestWarm(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "run", "pierd.sock")
	conf := loadConf(t, socket, `"subnet":"10.1.0.0/24"`, "")
	down := lite.New(socket)
	down.Warm() // nothing listens yet
	startDaemon(t, socket, filepath.Join(dir, "data"))
	if _, err := down.Allocate(context.Background(), conf, own("c0")); err != nil {
		t.Fatalf("ADD after a failed Warm: %v", err)
	}
	down.Close()

	c := lite.New(socket)
	defer c.Close()
	c.Warm()
	time.Sleep(lite.ConnectTimeout + 100*time.Millisecond)
	if _, err := c.Allocate(context.Background(), conf, own("c1")); err != nil {
		t.Fatalf("ADD on a connection warmed long before: %v", err)
	}
}
