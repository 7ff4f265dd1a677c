package pierd

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

const usedSample = `pierd_ipam_pool_used{network="net1",range="10.30.0.1-10.30.0.6",range_set="0"}`

// TestScrapeWhileNetworkLocked guards ADD against /metrics, which anyone
// who reaches the metrics address may request: scrapes used to read pool
// use under the network's locks, so concurrent scrapers queued with the
// ADDs and delayed them. Here the network's store lock is held and an
// Allocate waits inside pierd holding the network's turn; scrapes must
// still complete, with the pool figures.
func TestScrapeWhileNetworkLocked(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dir := t.TempDir()
	socket := filepath.Join(dir, "pierd.sock")
	dataDir := filepath.Join(dir, "data")
	d := start(t, Options{Socket: socket, DataDir: dataDir, MetricsAddr: "127.0.0.1:0"})
	conf := testConf(t, socket)
	c := lite.New(socket)
	defer c.Close()
	for _, id := range []string{"c1", "c2"} {
		if _, err := c.Allocate(context.Background(), conf, ipam.Owner{ContainerID: id, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	unlock := holdStoreLock(t, filepath.Join(dataDir, "net1", "lock"))
	added := make(chan error, 1)
	go func() {
		c := lite.New(socket)
		defer c.Close()
		_, err := c.Allocate(context.Background(), conf, ipam.Owner{ContainerID: "c3", IfName: "eth0"})
		added <- err
	}()
	waitFor(t, "the Allocate to wait inside pierd", func() bool { return d.inFlight() > 0 })

	var wg sync.WaitGroup
	for range maxScrapes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := metricValue(t, d, usedSample); got != 2 {
				t.Errorf("pool used %d during the Allocate, want 2", got)
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-added:
		t.Fatalf("the Allocate ended while the store was locked: %v", err)
	default:
	}
	unlock()
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the scrape to show the third address", func() bool { return metricValue(t, d, usedSample) == 3 })
}

// TestAllocateWhileScrapeBlocked: a scrape stuck in its pool snapshot holds
// nothing an Allocate needs.
func TestAllocateWhileScrapeBlocked(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dir := t.TempDir()
	socket := filepath.Join(dir, "pierd.sock")
	d := start(t, Options{Socket: socket, DataDir: filepath.Join(dir, "data"), MetricsAddr: "127.0.0.1:0"})
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	d.pools.read = func() (map[string][]ipamrpc.PoolUsage, error) {
		once.Do(func() { close(entered) })
		<-release
		return nil, nil
	}
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		get(t, "http://"+d.MetricsAddr()+"/metrics", 200)
	}()
	<-entered
	c := lite.New(socket)
	defer c.Close()
	for i := range 3 {
		if _, err := c.Allocate(context.Background(), testConf(t, socket), ipam.Owner{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}); err != nil {
			t.Fatalf("Allocate while a scrape is blocked: %v", err)
		}
	}
	close(release)
	<-scraped
}

// holdStoreLock takes a network store's flock, as a slow writer would,
// until the returned function (or the test's end) lets go.
func holdStoreLock(t *testing.T, path string) (unlock func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	unlock = func() { once.Do(func() { _ = f.Close() }) } // closing releases the flock
	t.Cleanup(unlock)
	return unlock
}

// TestMetricsConnLimit guards the IPAM socket's file descriptors against
// the metrics listener, which anyone on the node can connect to: a user
// holding 40 idle connections makes pierd hold at most maxMetricsConns of
// them, and IPAM calls go on.
func TestMetricsConnLimit(t *testing.T) {
	if !inNetns(t) {
		return
	}
	h := newHelper(t)
	socket := h.socket("run")
	d := start(t, Options{Socket: socket, MetricsAddr: "127.0.0.1:0"})
	baseline := tcpFDs(t) // the listener
	release := h.hold(65534, clientScript{HoldTCP: d.MetricsAddr(), Hold: 40})
	// Every connection is either accepted (a descriptor of pierd) or
	// waiting in the listener's backlog.
	waitFor(t, "pierd to take or queue all 40", func() bool { return tcpFDs(t)-baseline+listenBacklog(t, d.MetricsAddr()) == 40 })
	if n := tcpFDs(t) - baseline; n != maxMetricsConns {
		t.Errorf("pierd holds %d metrics connections, want %d", n, maxMetricsConns)
	}
	c := lite.New(socket)
	defer c.Close()
	if _, err := c.Allocate(context.Background(), testConf(t, socket), ipam.Owner{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatalf("Allocate while the metrics listener is full: %v", err)
	}
	release()
	if got := metricValue(t, d, usedSample); got != 1 {
		t.Errorf("pool used %d after the holder left, want 1", got)
	}
}

// listenBacklog is how many connections wait to be accepted on the IPv4
// TCP listener at addr: /proc/net/tcp shows it as the listener's rx_queue.
func listenBacklog(t *testing.T, addr string) int {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf(":%04X", ap.Port())
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasSuffix(f[1], local) && f[3] == "0A" { // 0A: LISTEN
			_, rx, _ := strings.Cut(f[4], ":")
			n, err := strconv.ParseInt(rx, 16, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return int(n)
		}
	}
	t.Fatalf("no listener at %s in /proc/net/tcp", addr)
	return 0
}
