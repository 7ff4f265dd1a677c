package pierd

// Who may call: the file modes of the socket are the first gate (only root
// can reach a 0600 socket in a 0700 directory); SO_PEERCRED is the second,
// and the one that holds when the modes are opened for --allow-uid or the
// socket is bind-mounted somewhere else. The kernel records the peer's
// credentials at connect(2); the transport "handshake" below reads them and
// a unary interceptor refuses a disallowed uid with PermissionDenied, so the
// client gets a status saying why instead of a closed connection.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
)

// peerCred is the AuthInfo of a connection: the peer process's identity.
type peerCred struct {
	credentials.CommonAuthInfo
	uid, pid int
}

func (peerCred) AuthType() string { return "peercred" }

// peerCreds are transport credentials that only read SO_PEERCRED.
type peerCreds struct{}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("pierd serves unix sockets only")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if cerr != nil {
		return nil, nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return c, peerCred{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		uid:            int(cred.Uid), pid: int(cred.Pid),
	}, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peerCreds is for the server side")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

func (peerCreds) OverrideServerName(string) error { return nil }

// authorize refuses calls from a uid other than root and allowed.
func authorize(allowed []int) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		uid := -1
		if p, ok := peer.FromContext(ctx); ok {
			if pc, ok := p.AuthInfo.(peerCred); ok {
				uid = pc.uid
			}
		}
		if uid != 0 && !slices.Contains(allowed, uid) {
			msg := fmt.Sprintf("pierd refuses uid %d: only root may call it (see pierd --allow-uid)", uid)
			st := status.New(codes.PermissionDenied, msg)
			if d, err := st.WithDetails(&ipamv1.Error{CniCode: uint32(cnierr.IOFailure), Msg: msg}); err == nil {
				st = d
			}
			return nil, st.Err()
		}
		return handler(ctx, req)
	}
}
