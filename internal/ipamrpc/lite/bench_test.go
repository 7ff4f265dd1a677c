package lite_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// The client's cost per call against pierd in this process, as a plugin
// makes them: one connection, sequential calls.
//
//	go test -run '^$' -bench . -benchtime 2000x ./internal/ipamrpc/lite/

// BenchmarkAddDel: an Allocate and the Release of the same owner.
func BenchmarkAddDel(b *testing.B) {
	dm := newDaemon(b)
	c := lite.New(dm.socket)
	defer c.Close()
	conf := loadConf(b, dm.socket, `"subnet":"10.40.0.0/16"`, "")
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		o := own(fmt.Sprint("bench-", i))
		if _, err := c.Allocate(ctx, conf, o); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Release(ctx, conf, o); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFirstCall: a new client's first call (connect, preface and
// the call), which is what each plugin process pays.
func BenchmarkFirstCall(b *testing.B) {
	dm := newDaemon(b)
	conf := loadConf(b, dm.socket, `"subnet":"10.40.0.0/16"`, "")
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		c := lite.New(dm.socket)
		if err := c.Status(ctx, conf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkLargeGC: a GC whose request lists 20,000 attachments (~1.5 MB,
// beyond HTTP/2's default windows).
func BenchmarkLargeGC(b *testing.B) {
	dm := newDaemon(b)
	c := lite.New(dm.socket)
	defer c.Close()
	conf := loadConf(b, dm.socket, `"subnet":"10.40.0.0/16"`, "")
	var valid []ipam.Owner
	for i := range 20000 {
		valid = append(valid, own(fmt.Sprintf("%s%06d", strings.Repeat("f", 58), i)))
	}
	b.ResetTimer()
	for range b.N {
		if _, err := c.GC(context.Background(), conf, valid); err != nil {
			b.Fatal(err)
		}
	}
}
