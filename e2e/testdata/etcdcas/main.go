// Command etcdcas measures etcd's raw compare-and-swap rate: N writers,
// each on its own key, each doing read-then-Txn(ModRevision = read) with a
// Put, for a duration. It prints "<successful CAS writes per second>".
// The cluster tests run it inside the sandbox next to pierd's rate.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func main() {
	endpoint := flag.String("endpoint", "", "etcd URL")
	writers := flag.Int("writers", 3, "writers, each on its own key")
	dur := flag.Duration("for", 2*time.Second, "how long")
	flag.Parse()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer cli.Close()
	var ok atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(*dur)
	for w := range *writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("/bench/cas/%d", w)
			ctx := context.Background()
			for i := 0; time.Now().Before(end); i++ {
				g, err := cli.Get(ctx, key)
				if err != nil {
					return
				}
				var rev int64
				if len(g.Kvs) > 0 {
					rev = g.Kvs[0].ModRevision
				}
				r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
					Then(clientv3.OpPut(key, fmt.Sprint(i))).Commit()
				if err == nil && r.Succeeded {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%.0f\n", float64(ok.Load())/dur.Seconds())
}
