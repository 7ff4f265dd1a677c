package rpcerr

import (
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

// TestMapping is the table of every CNI code Pier returns: the gRPC code it
// travels with, and the CNI code a client derives from that gRPC code when
// the status lost its detail. Only "try again later" survives without the
// detail; everything else must come through the detail.
func TestMapping(t *testing.T) {
	cases := []struct {
		cni      uint
		grpc     Code
		fallback uint
	}{
		{cnierr.IncompatibleVersion, InvalidArgument, cnierr.IOFailure},
		{cnierr.UnsupportedField, InvalidArgument, cnierr.IOFailure},
		{cnierr.UnknownContainer, NotFound, cnierr.IOFailure},
		{cnierr.InvalidEnv, InvalidArgument, cnierr.IOFailure},
		{cnierr.IOFailure, Internal, cnierr.IOFailure},
		{cnierr.DecodingFailure, InvalidArgument, cnierr.IOFailure},
		{cnierr.InvalidConfig, InvalidArgument, cnierr.IOFailure},
		{cnierr.TryAgainLater, Unavailable, cnierr.TryAgainLater},
		{cnierr.PluginNotAvailable, FailedPrecondition, cnierr.IOFailure},
		{cnierr.LimitedConnectivity, FailedPrecondition, cnierr.IOFailure},
		{cnierr.InterfaceExists, Internal, cnierr.IOFailure},
		{cnierr.AddressUnavailable, FailedPrecondition, cnierr.IOFailure},
		{cnierr.PoolExhausted, ResourceExhausted, cnierr.IOFailure},
		{cnierr.NATConflict, Internal, cnierr.IOFailure},
		{cnierr.PortConflict, Internal, cnierr.IOFailure},
	}
	for _, c := range cases {
		if got := FromCNI(c.cni); got != c.grpc {
			t.Errorf("FromCNI(%d) = %d, want %d", c.cni, got, c.grpc)
		}
		if got := ToCNI(FromCNI(c.cni)); got != c.fallback {
			t.Errorf("ToCNI(FromCNI(%d)) = %d, want %d", c.cni, got, c.fallback)
		}
	}
	for code, want := range map[Code]uint{OK: 0, DeadlineExceeded: cnierr.TryAgainLater, Canceled: cnierr.TryAgainLater,
		PermissionDenied: cnierr.IOFailure, Unauthenticated: cnierr.IOFailure, Unimplemented: cnierr.IOFailure} {
		if got := ToCNI(code); got != want {
			t.Errorf("ToCNI(%d) = %d, want %d", code, got, want)
		}
	}
}
