package ipamrpc

import (
	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
	"github.com/pier-cni/pier/internal/ipamrpc/rpcerr"
)

// ToStatus turns an allocator's error into the gRPC status pierd answers
// with: the code of rpcerr.FromCNI and a pier.ipam.v1.Error detail holding
// the CNI code, message and details, so that clients return the very CNI
// error an in-process allocator would.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	te := cnierr.ToCNI(err)
	st := status.New(codes.Code(rpcerr.FromCNI(te.Code)), te.Msg)
	if d, derr := st.WithDetails(&ipamv1.Error{CniCode: uint32(te.Code), Msg: te.Msg, Details: te.Details}); derr == nil {
		st = d
	}
	return st.Err()
}

// FromStatus turns a failed call's error back into the CNI error pierd
// meant: the pier.ipam.v1.Error detail when there is one, else a code
// from the gRPC code (rpcerr.ToCNI) with where (which daemon, which call)
// in the message. Errors that are not gRPC statuses keep their own code.
func FromStatus(err error, where string) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if e, ok := d.(*ipamv1.Error); ok {
			return &types.Error{Code: uint(e.GetCniCode()), Msg: e.GetMsg(), Details: e.GetDetails()}
		}
	}
	code := rpcerr.ToCNI(rpcerr.Code(st.Code()))
	if code == cnierr.TryAgainLater {
		return cnierr.Wrap(err, code, "%s is unreachable or busy", where)
	}
	return cnierr.Wrap(err, code, "%s failed", where)
}

// CNICode returns the CNI code of an error returned by the service.
func CNICode(err error) uint {
	if err == nil {
		return 0
	}
	return cnierr.CodeOf(FromStatus(err, "pierd"))
}
