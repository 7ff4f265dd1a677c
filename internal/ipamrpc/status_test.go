package ipamrpc

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
	"github.com/pier-cni/pier/internal/ipamrpc/rpcerr"
)

// TestRPCErrCodesAreGRPCs holds package rpcerr's numbers (which the
// plugins' client uses without linking gRPC) to grpc-go's.
func TestRPCErrCodesAreGRPCs(t *testing.T) {
	pairs := map[rpcerr.Code]codes.Code{
		rpcerr.OK: codes.OK, rpcerr.Canceled: codes.Canceled, rpcerr.Unknown: codes.Unknown,
		rpcerr.InvalidArgument: codes.InvalidArgument, rpcerr.DeadlineExceeded: codes.DeadlineExceeded,
		rpcerr.NotFound: codes.NotFound, rpcerr.AlreadyExists: codes.AlreadyExists, rpcerr.PermissionDenied: codes.PermissionDenied,
		rpcerr.ResourceExhausted: codes.ResourceExhausted, rpcerr.FailedPrecondition: codes.FailedPrecondition,
		rpcerr.Aborted: codes.Aborted, rpcerr.OutOfRange: codes.OutOfRange, rpcerr.Unimplemented: codes.Unimplemented,
		rpcerr.Internal: codes.Internal, rpcerr.Unavailable: codes.Unavailable, rpcerr.DataLoss: codes.DataLoss,
		rpcerr.Unauthenticated: codes.Unauthenticated,
	}
	for ours, theirs := range pairs {
		if uint32(ours) != uint32(theirs) {
			t.Errorf("rpcerr code %d is gRPC's %v (%d)", ours, theirs, theirs)
		}
	}
}

// TestStatusRoundTrip: every CNI code an allocator returns crosses the
// socket unchanged, with its message and details, and travels with
// rpcerr's gRPC code; a status without Pier's detail gets rpcerr.ToCNI's
// code and says where it came from.
func TestStatusRoundTrip(t *testing.T) {
	for _, code := range []uint{cnierr.IncompatibleVersion, cnierr.UnsupportedField, cnierr.UnknownContainer, cnierr.InvalidEnv,
		cnierr.IOFailure, cnierr.DecodingFailure, cnierr.InvalidConfig, cnierr.TryAgainLater, cnierr.PluginNotAvailable,
		cnierr.LimitedConnectivity, cnierr.AddressUnavailable, cnierr.PoolExhausted} {
		in := cnierr.Wrap(errors.New("the cause"), code, "what failed")
		wire := ToStatus(in)
		if got := status.Code(wire); uint32(got) != uint32(rpcerr.FromCNI(code)) {
			t.Errorf("code %d travels as gRPC %v, want %d", code, got, rpcerr.FromCNI(code))
		}
		var te *types.Error
		if out := FromStatus(wire, "pierd"); !errors.As(out, &te) || te.Code != code || te.Msg != "what failed: the cause" || te.Details != "the cause" {
			t.Errorf("code %d came back as %#v", code, out)
		}
		if CNICode(wire) != code {
			t.Errorf("CNICode of code %d = %d", code, CNICode(wire))
		}
	}
	for c, want := range map[codes.Code]uint{codes.Unavailable: cnierr.TryAgainLater, codes.DeadlineExceeded: cnierr.TryAgainLater,
		codes.PermissionDenied: cnierr.IOFailure, codes.Unimplemented: cnierr.IOFailure} {
		out := FromStatus(status.Error(c, "plain"), "pierd at /x")
		if cnierr.CodeOf(out) != want || !strings.Contains(out.Error(), "pierd at /x") {
			t.Errorf("a plain %v status came back as %v (code %d), want code %d", c, out, cnierr.CodeOf(out), want)
		}
	}
	if ToStatus(nil) != nil || FromStatus(nil, "x") != nil {
		t.Error("nil is not an error")
	}
}

// oneAddress is an allocator of another kind than the local store: it
// hands out 192.0.2.7/24 and knows nothing else.
type oneAddress struct{ ipam.Allocator }

func (oneAddress) Allocate(context.Context, *config.IPAMConfig, ipam.Owner) ([]ipam.Address, error) {
	return []ipam.Address{{Prefix: netip.MustParsePrefix("192.0.2.7/24"), Gateway: netip.MustParseAddr("192.0.2.1")}}, nil
}

func (oneAddress) Release(context.Context, *config.IPAMConfig, ipam.Owner) (int, error) {
	return 0, cnierr.New(cnierr.TryAgainLater, "etcd is unreachable")
}

// TestServerServesAnyAllocator: the server translates for whatever
// allocator it is given, errors included, and names the owner in an
// Allocate answer.
func TestServerServesAnyAllocator(t *testing.T) {
	s, err := NewServer(ServerOptions{Allocator: oneAddress{}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	n := wireNet("n", &ipamv1.Range{Subnet: "192.0.2.0/24"})
	owner := &ipamv1.Owner{ContainerId: "c1", IfName: "eth0"}
	resp, err := s.Allocate(context.Background(), &ipamv1.AllocateRequest{Network: n, Owner: owner})
	if err != nil || len(resp.GetAddresses()) != 1 || resp.GetAddresses()[0].GetAddress() != "192.0.2.7/24" ||
		resp.GetAddresses()[0].GetGateway() != "192.0.2.1" || resp.GetOwner().GetContainerId() != "c1" {
		t.Fatalf("Allocate = %v, %v", resp, err)
	}
	_, err = s.Release(context.Background(), &ipamv1.ReleaseRequest{Network: n, Owner: owner})
	if status.Code(err) != codes.Unavailable || CNICode(err) != cnierr.TryAgainLater {
		t.Fatalf("Release = %v, want gRPC Unavailable carrying code 11", err)
	}
}
