package pierd

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// Throughput of one pierd with 8 concurrent clients (the plugin's client,
// one connection each), server and clients in this process:
//
//	go test -run '^$' -bench . -benchtime 3000x ./internal/pierd/
func BenchmarkAllocate8Clients(b *testing.B) { benchClients(b, 8, false) }

// Each op is an Allocate and the Release of the same owner (a pod's ADD
// and DEL as far as IPAM goes).
func BenchmarkAllocateRelease8Clients(b *testing.B) { benchClients(b, 8, true) }

func benchClients(b *testing.B, clients int, release bool) {
	dir := b.TempDir()
	socket := filepath.Join(dir, "pierd.sock")
	d, err := Start(Options{Socket: socket, DataDir: filepath.Join(dir, "data")})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.Stop(ctx) // the figures are reported already
	}()
	conf, err := config.LoadIPAM([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bench","ipam":{"type":"pier-ipam","daemonSocket":%q,"subnet":"10.32.0.0/16"}}`, socket)), "")
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := lite.New(socket)
			defer c.Close()
			for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
				o := ipam.Owner{ContainerID: fmt.Sprintf("bench-%d", i), IfName: "eth0"}
				if _, err := c.Allocate(context.Background(), conf, o); err != nil {
					errs <- err
					return
				}
				if release {
					if _, err := c.Release(context.Background(), conf, o); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "allocs/s")
}
