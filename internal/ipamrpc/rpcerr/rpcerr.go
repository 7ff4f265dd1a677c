// Package rpcerr is the one mapping between Pier's IPAM errors and gRPC.
//
// An allocator's error carries a CNI code (package cnierr). Over pierd's
// socket it travels as a gRPC status whose code is FromCNI's and whose
// pier.ipam.v1.Error detail holds the CNI code, message and details, so
// the plugin returns exactly the error an in-process allocator would. A
// status without that detail (a generic server, a proxy, the transport
// itself) is read back with ToCNI.
//
// The package imports no gRPC code: the plugins' lean client (ipamrpc/lite)
// uses it as pierd's grpc-go server and pierctl's grpc-go client
// (ipamrpc.ToStatus, ipamrpc.FromStatus) do. Codes are gRPC's wire numbers,
// which are fixed by the gRPC protocol (google.golang.org/grpc/codes has
// the same values; a test holds them together).
package rpcerr

import "github.com/pier-cni/pier/internal/cnierr"

// Code is a gRPC status code, as numbered on the wire.
type Code uint32

// The gRPC status codes.
const (
	OK                 Code = 0
	Canceled           Code = 1
	Unknown            Code = 2
	InvalidArgument    Code = 3
	DeadlineExceeded   Code = 4
	NotFound           Code = 5
	AlreadyExists      Code = 6
	PermissionDenied   Code = 7
	ResourceExhausted  Code = 8
	FailedPrecondition Code = 9
	Aborted            Code = 10
	OutOfRange         Code = 11
	Unimplemented      Code = 12
	Internal           Code = 13
	Unavailable        Code = 14
	DataLoss           Code = 15
	Unauthenticated    Code = 16
)

// FromCNI is the gRPC code a failure with CNI code cni travels with. It
// tells generic gRPC clients the kind of failure; Pier's own clients read
// the exact CNI code from the status's detail.
func FromCNI(cni uint) Code {
	switch cni {
	case 0:
		return OK
	case cnierr.TryAgainLater:
		return Unavailable
	case cnierr.UnknownContainer:
		return NotFound
	case cnierr.IncompatibleVersion, cnierr.UnsupportedField, cnierr.InvalidEnv, cnierr.DecodingFailure, cnierr.InvalidConfig:
		return InvalidArgument
	case cnierr.PluginNotAvailable, cnierr.LimitedConnectivity, cnierr.AddressUnavailable:
		return FailedPrecondition
	case cnierr.PoolExhausted:
		return ResourceExhausted
	}
	return Internal
}

// ToCNI is the CNI code of a failed call whose status carries no
// pier.ipam.v1.Error detail: a call that did not get through or ran out
// of time may be tried again (11); anything else is an I/O failure (5),
// since such a status says nothing about the config or the container.
func ToCNI(c Code) uint {
	switch c {
	case OK:
		return 0
	case Unavailable, DeadlineExceeded, Canceled:
		return cnierr.TryAgainLater
	}
	return cnierr.IOFailure
}
