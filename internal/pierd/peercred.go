package pierd

// Who may call: the file modes of the socket are the first gate (only root
// can reach a 0600 socket in a 0700 directory); SO_PEERCRED is the second,
// and the one that holds when the modes are opened for --allow-uid or the
// socket is bind-mounted somewhere else. The gate (gate.go) reads the
// peer's credentials when it accepts a connection and refuses a uid that
// may not call before any stream is served; the transport "handshake"
// below hands the same credentials to grpc-go, so that the interceptor of
// authz.go can scope each call to the caller's networks.

import (
	"context"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// peerCred is the AuthInfo of a connection: the peer process's identity.
type peerCred struct {
	credentials.CommonAuthInfo
	uid, pid int
}

func (peerCred) AuthType() string { return "peercred" }

// peerCreds are transport credentials that only pass on what the gate read.
type peerCreds struct{}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	gc, ok := c.(*gatedConn)
	if !ok {
		return nil, nil, errors.New("pierd serves connections admitted by its gate only")
	}
	cred := gc.cred
	cred.CommonAuthInfo = credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}
	return c, cred, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peerCreds is for the server side")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

func (peerCreds) OverrideServerName(string) error { return nil }
