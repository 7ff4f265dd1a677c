// Package lite is the client of pierd's IPAM service that the plugin
// binaries (pier, pier-ipam) link for daemon mode ("ipam": {"daemonSocket":
// …}). A Client is an ipam.Allocator, like the local store the plugins use
// otherwise, so the plugin's semantics are the same in every mode; pierd
// serves ipam.Local over the same file store (or cluster.Cluster).
//
// # Why not grpc-go here
//
// The plugins are exec'd once per CNI call, and in Go every linked package's
// init runs at every start, whatever mode the config asks for. Measured on
// the 2-vCPU reference machine (static builds, medians of 3×60 interleaved
// `CNI_COMMAND=VERSION` runs of `pier`, against the same tree without
// daemon mode):
//
//	                                             start-up        binary
//	without daemon mode                          1.82–1.94 ms     7.0 MB
//	grpc-go client + generated messages          +1.1–1.4 ms     17.9 MB
//	generated messages only (protobuf runtime)   +0.25–0.3 ms     9.5 MB
//	this package                                 ±0.05 ms (noise) +0.3 MB
//
// grpc-go would also link net/http and crypto/tls (its one package holds
// client, server and the HTTP/2 transport shared by both). So this package
// speaks the gRPC wire protocol itself — HTTP/2 frames, HPACK headers
// (golang.org/x/net/http2/hpack, which imports nothing but the standard
// library), length-prefixed messages, grpc-status trailers — for sequential
// unary calls on one connection, and encodes the few pier.ipam.v1 messages
// it needs by hand (codec.go, wire.go; not even protowire, whose module
// init reads the executable). It is still gRPC on the wire: pierd is
// a stock grpc-go server, and the tests run this client against it.
// pierctl and tests use the full grpc-go client (package ipamrpc).
//
// # Deadlines and errors
//
// Reaching pierd (with retries while it starts or restarts, until it first
// answers on a connection) is bounded by ConnectTimeout; each call by
// CallTimeout (or the
// caller's earlier deadline), which travels to pierd as grpc-timeout so it
// stops waiting too. A pierd that cannot be reached, or that fails or goes
// away during a call, gives code 11 (try again later): an ADD whose fate is
// unknown is safe to retry, being idempotent, and the runtime DELs a failed
// ADD. STATUS turns that into code 50. pierd's own errors carry the CNI code
// and message that local mode would return.
package lite

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc/rpcerr"
)

const (
	// ConnectTimeout bounds reaching pierd: an ADD with pierd down fails
	// with code 11 after this, well within the 2 s the README promises.
	ConnectTimeout = time.Second
	// CallTimeout bounds one call once connected, below a runtime's CNI
	// timeout; pierd's store lock waits get the same deadline.
	CallTimeout = 10 * time.Second

	service = "/pier.ipam.v1.IPAM/"
)

// Client makes sequential calls to pierd over one connection, dialled on
// first use and again after pierd closed it. It is not safe for concurrent
// use: a plugin process makes its calls one after another.
type Client struct {
	Socket string
	conn   *h2conn
}

// New returns a client of the pierd listening at socket.
func New(socket string) *Client { return &Client{Socket: socket} }

// Warm connects now and sends the connection preface, without waiting for
// pierd, so that pierd sets the connection up while the caller does other
// work (the plugin creates the veth pair before it allocates). Any failure
// is left for the first call, which dials again with its retries.
func (c *Client) Warm() {
	if c.conn != nil {
		return
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: c.Socket, Net: "unix"})
	if err != nil {
		return // the first call meets it again, with retries
	}
	if err := checkServer(conn, c.Socket); err != nil {
		_ = conn.Close() // the first call dials again and reports it
		return
	}
	h := newConn(conn, time.Now().Add(ConnectTimeout))
	if err := h.writePreface(); err != nil {
		_ = conn.Close() // as above: the first call dials afresh
		return
	}
	c.conn = h
}

// Close closes the connection, if any.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	err := c.conn.close()
	c.conn = nil
	return err
}

// invoke calls method with req and returns the response message, or a
// coded error.
//
// Retries: while pierd cannot be reached — no socket, connection refused,
// or a connection dropped before pierd said anything (it was killed with
// our connection in its backlog) — the call is tried again with a short
// backoff until ConnectTimeout has passed. A call cut after pierd answered
// (pierd restarted, or closed an idle connection) is made once more on a
// fresh connection: every call of the API is idempotent (a repeated
// Allocate returns the owner's addresses), so a retry is safe even when
// pierd acted on the first attempt. A call that ran out of time is not
// retried.
func (c *Client) invoke(ctx context.Context, method string, req []byte) ([]byte, error) {
	if len(req) > MaxRequest {
		return nil, cnierr.New(cnierr.IOFailure, "pierd's %s request would be %d bytes, more than the %d it accepts", method, len(req), MaxRequest)
	}
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	connectBy := time.Now().Add(ConnectTimeout)
	wait, retried := backoffFirst, false
	for {
		resp, err := c.attempt(ctx, connectBy, method, req)
		if err == nil {
			return resp, nil
		}
		var st *rpcStatus
		if errors.As(err, &st) {
			return nil, statusError(method, st)
		}
		if errors.Is(err, errRefused) || errors.Is(err, errUntrusted) {
			return nil, cnierr.Wrap(err, cnierr.IOFailure, "pierd at %s", c.Socket)
		}
		timedOut := ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
		switch {
		case errors.Is(err, errNoConnection):
			if timedOut || permissionDenied(err) || !time.Now().Add(wait).Before(connectBy) || !sleep(ctx, wait) {
				return nil, c.unreachable(err)
			}
			wait = min(2*wait, backoffMax)
		case !retried && !timedOut:
			retried = true
			connectBy = time.Now().Add(ConnectTimeout) // a fresh budget to reach the restarted pierd
		default:
			return nil, cnierr.Wrap(err, cnierr.TryAgainLater, "pierd at %s: %s failed", c.Socket, method)
		}
	}
}

// errNoConnection marks an attempt that never heard from pierd.
var errNoConnection = errors.New("no connection to pierd")

// attempt makes one try, dialling first when there is no usable connection.
func (c *Client) attempt(ctx context.Context, connectBy time.Time, method string, req []byte) ([]byte, error) {
	if c.conn == nil || c.conn.goAway || c.conn.spent() {
		_ = c.Close() // a connection the server is done with: nothing to lose
		cctx, cancel := context.WithDeadline(ctx, connectBy)
		conn, err := dialH2(cctx, c.Socket, connectBy)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errNoConnection, err)
		}
		c.conn = conn
	}
	if !c.conn.alive {
		c.conn.connectBy = connectBy // a warmed connection gets this call's budget
	}
	resp, err := c.conn.call(ctx, service+method, req)
	var st *rpcStatus
	if err != nil && !errors.As(err, &st) {
		alive := c.conn.alive
		_ = c.Close() // broken mid-call: the next attempt dials afresh
		// Never heard from pierd, or turned away before our stream (too
		// many connections, or a GOAWAY as it stops): pierd did not act
		// on the call, so it is retried like a failed connect.
		if !alive || errors.Is(err, errUnavailable) {
			return nil, fmt.Errorf("%w: %w", errNoConnection, err)
		}
	}
	return resp, err
}

func permissionDenied(err error) bool {
	return errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)
}

// unreachable: no connection could be made. A socket we may not open is a
// setup problem no retry fixes; anything else is pierd being down.
func (c *Client) unreachable(err error) error {
	if permissionDenied(err) {
		return cnierr.Wrap(err, cnierr.IOFailure, "pierd socket %s cannot be opened", c.Socket)
	}
	return cnierr.Wrap(err, cnierr.TryAgainLater, "pierd is unreachable at %s", c.Socket)
}

// statusError turns a gRPC status into the CNI error pierd meant: its
// pier.ipam.v1.Error detail when present, else a code from the gRPC code
// (rpcerr.ToCNI, the mapping pierd's server and pierctl use too).
func statusError(method string, st *rpcStatus) error {
	if we, err := decodeErrorDetail(st.Details); err == nil {
		return &types.Error{Code: uint(we.code), Msg: we.msg, Details: we.details}
	}
	return cnierr.Wrap(st, rpcerr.ToCNI(rpcerr.Code(st.Code)), "pierd refused %s", method)
}

// Allocate implements ipam.Allocator. pierd's answer must name owner as
// the attachment it allocated to; an answer for anyone else is refused
// (code 5) and what it may have allocated for owner released. The plugin
// checks the addresses against its ranges (ipam.AllocateResult).
func (c *Client) Allocate(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) ([]ipam.Address, error) {
	resp, err := c.invoke(ctx, "Allocate", encodeOwnerRequest(conf, owner, true))
	if err != nil {
		return nil, err
	}
	wa, to, err := decodeAllocateResponse(resp)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd's Allocate response")
	}
	if to != owner {
		err := cnierr.New(cnierr.IOFailure, "pierd at %s answered an allocation for %q, not for %s", c.Socket, to, owner)
		if _, rerr := c.Release(ctx, conf, owner); rerr != nil {
			err = errors.Join(err, fmt.Errorf("and releasing what %s may hold failed: %w", owner, rerr))
		}
		return nil, err
	}
	out := make([]ipam.Address, 0, len(wa))
	for _, a := range wa {
		addr, err := address(a)
		if err != nil {
			return nil, err
		}
		out = append(out, addr)
	}
	return out, nil
}

func address(a wireAddress) (ipam.Address, error) {
	p, err := netip.ParsePrefix(a.address)
	if err != nil {
		return ipam.Address{}, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd returned address %q", a.address)
	}
	out := ipam.Address{Prefix: netip.PrefixFrom(p.Addr().Unmap(), p.Bits()), RangeSet: int(a.rangeSet)}
	if a.gateway != "" {
		gw, err := netip.ParseAddr(a.gateway)
		if err != nil {
			return ipam.Address{}, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd returned gateway %q", a.gateway)
		}
		out.Gateway = gw.Unmap()
	}
	return out, nil
}

// Release implements ipam.Allocator.
func (c *Client) Release(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) (int, error) {
	resp, err := c.invoke(ctx, "Release", encodeOwnerRequest(conf, owner, false))
	if err != nil {
		return 0, err
	}
	return decodeCount(resp)
}

// Check implements ipam.Allocator.
func (c *Client) Check(ctx context.Context, conf *config.IPAMConfig, owner ipam.Owner) ([]netip.Addr, error) {
	resp, err := c.invoke(ctx, "Check", encodeOwnerRequest(conf, owner, false))
	if err != nil {
		return nil, err
	}
	ss, err := decodeStrings(resp, fRespAddresses)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd's Check response")
	}
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd returned address %q", s)
		}
		out = append(out, a)
	}
	return out, nil
}

// GC implements ipam.Allocator.
func (c *Client) GC(ctx context.Context, conf *config.IPAMConfig, valid []ipam.Owner) (int, error) {
	resp, err := c.invoke(ctx, "GC", encodeGCRequest(conf, valid))
	if err != nil {
		return 0, err
	}
	return decodeCount(resp)
}

// Status implements ipam.Allocator: pierd unreachable is "cannot serve
// ADD" (code 50) too.
func (c *Client) Status(ctx context.Context, conf *config.IPAMConfig) error {
	_, err := c.invoke(ctx, "Status", encodeStatusRequest(conf))
	if err == nil {
		return nil
	}
	if code := cnierr.CodeOf(err); code != cnierr.PluginNotAvailable && code != cnierr.LimitedConnectivity {
		return cnierr.Wrap(err, cnierr.PluginNotAvailable, "network %q cannot allocate", conf.Name)
	}
	return err
}

// List implements ipam.Allocator; the range set of each reservation is
// worked out from conf.
func (c *Client) List(ctx context.Context, conf *config.IPAMConfig) ([]ipam.Reservation, error) {
	resp, err := c.invoke(ctx, "List", encodeListRequest(conf.Name))
	if err != nil {
		return nil, err
	}
	leases, err := decodeListResponse(resp, conf.Name)
	if err != nil {
		return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd's List response")
	}
	out := make([]ipam.Reservation, 0, len(leases))
	for _, l := range leases {
		a, err := netip.ParseAddr(l.address)
		if err != nil {
			return nil, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd returned address %q", l.address)
		}
		out = append(out, ipam.Reservation{Addr: a, Owner: l.owner, RangeSet: ipam.RangeSetOf(conf, a), Problem: l.problem})
	}
	return out, nil
}
