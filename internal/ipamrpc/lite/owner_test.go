package lite_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1/ipamv1grpc"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

var _ ipam.Allocator = (*lite.Client)(nil)

// confused answers every Allocate with an allocation for someone else.
type confused struct {
	ipamv1grpc.UnimplementedIPAMServer
	mu       sync.Mutex
	released []string
}

func (c *confused) Allocate(context.Context, *ipamv1.AllocateRequest) (*ipamv1.AllocateResponse, error) {
	return &ipamv1.AllocateResponse{
		Addresses: []*ipamv1.Address{{Address: "10.1.0.9/24", Gateway: "10.1.0.1"}},
		Owner:     &ipamv1.Owner{ContainerId: "someone-else", IfName: "eth0"},
	}, nil
}

func (c *confused) Release(_ context.Context, req *ipamv1.ReleaseRequest) (*ipamv1.ReleaseResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released = append(c.released, req.GetOwner().GetContainerId())
	return &ipamv1.ReleaseResponse{}, nil
}

// TestAllocationForAnotherOwnerRefused guards the plugin against an
// answer meant for another attachment (a confused or impostor daemon, or
// an answer crossing calls): the client refuses it with code 5, naming
// both owners, and releases whatever pierd may hold for the owner it
// asked for.
func TestAllocationForAnotherOwnerRefused(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "confused.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	c := &confused{}
	ipamv1grpc.RegisterIPAMServer(srv, c)
	go func() { _ = srv.Serve(l) }() // ends with Stop
	defer srv.Stop()
	client := lite.New(socket)
	defer client.Close()
	conf := loadConf(t, socket, `"subnet":"10.1.0.0/24"`, "")
	_, err = client.Allocate(context.Background(), conf, own("c1"))
	if cnierr.CodeOf(err) != cnierr.IOFailure {
		t.Fatalf("Allocate: %v (code %d), want code 5", err, cnierr.CodeOf(err))
	}
	for _, part := range []string{"someone-else/eth0", "c1/eth0"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q does not name %s", err, part)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.released) != 1 || c.released[0] != "c1" {
		t.Fatalf("released %v, want c1's", c.released)
	}
}
