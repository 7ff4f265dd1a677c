package pierd

// What each caller may do.
//
//   - root, and the uid pierd runs as (it owns the store anyway), may make
//     every call on every network;
//   - a uid granted by --allow-uid UID=NET[,NET…] may make every call, but
//     only naming one of its networks: Allocate, Release, Check and GC on
//     another network are refused, and so are List and Status without a
//     network (they would report, and read the stores of, everyone's);
//   - every other uid is refused at accept (gate.go).
//
// Why networks are configured rather than recorded at a uid's first use: a
// first-use rule lets any allowed user claim a network name before root
// uses it (say the name a node's pods will get) and then release or GC
// root's containers' addresses on it, so the next container gets an
// address that is still in use. With the grant in pierd's flags, only the
// operator says which networks a user owns. A network shared by root and a
// user is the operator's choice; the user can then release its addresses.

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
)

// Grant lets a uid other than root call pierd about the networks it names.
type Grant struct {
	UID      int
	Networks []string
}

// access is who may connect and what each may do (see the file comment).
type access struct {
	self   int                     // pierd's effective uid
	grants map[int]map[string]bool // uid → networks it may use
}

func newAccess(grants []Grant) (*access, error) {
	a := &access{self: os.Geteuid(), grants: map[int]map[string]bool{}}
	for _, g := range grants {
		if g.UID < 0 || a.trusted(g.UID) {
			return nil, fmt.Errorf("uid %d: root and pierd's own uid may use every network and need no grant", g.UID)
		}
		if len(g.Networks) == 0 {
			return nil, fmt.Errorf("uid %d: name the networks it may use (UID=NETWORK[,NETWORK…])", g.UID)
		}
		nets := a.grants[g.UID]
		if nets == nil {
			nets = map[string]bool{}
			a.grants[g.UID] = nets
		}
		for _, n := range g.Networks {
			if err := config.ValidateNetworkName(n); err != nil {
				return nil, fmt.Errorf("uid %d: %w", g.UID, err)
			}
			nets[n] = true
		}
	}
	return a, nil
}

// trusted: root and pierd's own uid, which may do everything.
func (a *access) trusted(uid int) bool { return uid == 0 || uid == a.self }

// allowed: may connect at all.
func (a *access) allowed(uid int) bool { return a.trusted(uid) || a.grants[uid] != nil }

// shared says whether users other than root must reach the socket.
func (a *access) shared() bool { return len(a.grants) > 0 }

// authorize is the interceptor that enforces the rules above on each call.
func (a *access) authorize(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	uid := -1
	if p, ok := peer.FromContext(ctx); ok {
		if pc, ok := p.AuthInfo.(peerCred); ok {
			uid = pc.uid
		}
	}
	if a.trusted(uid) {
		return handler(ctx, req)
	}
	if err := a.check(uid, req); err != nil {
		return nil, permissionDenied(err.Error())
	}
	return handler(ctx, req)
}

// check says why uid may not make the call req, or nil.
func (a *access) check(uid int, req any) error {
	nets, ok := a.grants[uid]
	if !ok {
		return fmt.Errorf("pierd refuses uid %d: only root may call it (see pierd --allow-uid)", uid)
	}
	name, named := requestNetwork(req)
	switch {
	case !named:
		return fmt.Errorf("uid %d may only make calls about its networks (%s); calls about every network are root's", uid, list(nets))
	case !nets[name]:
		return fmt.Errorf("uid %d may not use network %q: pierd --allow-uid gives it only %s", uid, name, list(nets))
	}
	return nil
}

// requestNetwork returns the network a request is about; false for a call
// about every network (List and Status without one) or an unknown request.
func requestNetwork(req any) (string, bool) {
	switch r := req.(type) {
	case interface{ GetNetwork() *ipamv1.Network }:
		n := r.GetNetwork()
		return n.GetName(), n != nil && n.GetName() != ""
	case *ipamv1.ListRequest:
		return r.GetNetwork(), r.GetNetwork() != ""
	}
	return "", false
}

func list(nets map[string]bool) string { return fmt.Sprintf("%q", slices.Sorted(maps.Keys(nets))) }

// permissionDenied is a gRPC PermissionDenied status carrying the CNI error
// (code 5) the plugin returns.
func permissionDenied(msg string) error {
	st := status.New(codes.PermissionDenied, msg)
	if d, err := st.WithDetails(&ipamv1.Error{CniCode: uint32(cnierr.IOFailure), Msg: msg}); err == nil {
		st = d
	}
	return st.Err()
}
