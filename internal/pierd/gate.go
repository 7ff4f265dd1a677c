package pierd

// The gate: who gets a connection, decided at accept(2), before grpc-go
// spends a goroutine, a handshake deadline and HTTP/2 buffers on it.
//
// The kernel records the peer's credentials at connect(2); the gate reads
// them (SO_PEERCRED) as soon as it accepts a connection, then:
//
//   - a uid that may not call (neither root, nor pierd's own, nor granted by
//     --allow-uid) is told why in an HTTP/2 GOAWAY (INADEQUATE_SECURITY, the
//     reason as debug data, which the plugin's client and grpc-go both
//     show); the connection is kept at most refusalLinger so that the
//     answer is read, then closed;
//   - a uid other than root and pierd's own holds at most Limits.PerUID
//     connections, and all such uids together at most half of
//     Limits.Total, so root always has half of the slots; refused
//     connections count while they linger;
//   - past a limit, the connection gets a GOAWAY ENHANCE_YOUR_CALM and is
//     closed at once, so it holds no descriptor: the client retries while
//     its connect budget lasts, then fails with code 11 (try again later).
//
// So no single user can make pierd hold more than PerUID descriptors, nor
// all non-root users together more than Total/2, nor keep root out.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"
)

// Defaults of ConnLimits.
const (
	DefaultMaxConns       = 1024
	DefaultMaxConnsPerUID = 16
)

// refusalLinger bounds how long a refused connection is kept open for its
// GOAWAY to be read; a client reads it and closes within milliseconds.
const refusalLinger = time.Second

// ConnLimits bound the connections pierd holds; zero fields get defaults.
type ConnLimits struct {
	// Total bounds every connection; users other than root and pierd's
	// own share half of it.
	Total int
	// PerUID bounds each uid other than root and pierd's own.
	PerUID int
}

func (l ConnLimits) withDefaults() ConnLimits {
	if l.Total <= 0 {
		l.Total = DefaultMaxConns
	}
	if l.PerUID <= 0 {
		l.PerUID = DefaultMaxConnsPerUID
	}
	return l
}

// gate is the socket's listener, admitting connections as described above.
type gate struct {
	net.Listener
	limits  ConnLimits
	access  *access
	log     *slog.Logger
	refused func(reason string) // counts refusals for metrics; not nil
	lastLog atomic.Int64        // when a refusal was last logged (unix ns)

	mu        sync.Mutex // guards the counts below
	byUID     map[uint32]int
	untrusted int // connections of uids other than root and pierd's own
	total     int
	// held mirrors total for metrics, which must not wait for mu (an
	// accept holds it).
	held atomic.Int64
}

// gateOptions configure a gate.
type gateOptions struct {
	Limits  ConnLimits
	Access  *access
	Log     *slog.Logger
	Refused func(reason string) // counts a refusal: "uid" or "limit"
}

func newGate(l net.Listener, o gateOptions) *gate {
	return &gate{Listener: l, limits: o.Limits.withDefaults(), access: o.Access, log: o.Log, refused: o.Refused, byUID: map[uint32]int{}}
}

// Accept returns the next admitted connection; refusals never end it.
func (g *gate) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if admitted := g.admit(c); admitted != nil {
			return admitted, nil
		}
	}
}

// admit returns c as a gatedConn, or nil when it was refused (and is being
// answered or closed).
func (g *gate) admit(c net.Conn) net.Conn {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close() // not a unix socket: nothing to tell it
		return nil
	}
	cred, err := readPeerCred(uc)
	if err != nil {
		g.log.Warn("closing a connection whose peer cannot be read", "err", err)
		_ = uc.Close() // as above
		return nil
	}
	log := g.log.With("uid", cred.Uid, "pid", cred.Pid)
	if reason := g.take(cred.Uid); reason != "" {
		g.refused("limit")
		g.logRefusal(log, reason)
		goAway(uc, http2.ErrCodeEnhanceYourCalm, reason)
		_ = uc.Close() // the GOAWAY went out or could not: either way it is done
		return nil
	}
	if !g.access.allowed(int(cred.Uid)) {
		g.refused("uid")
		g.logRefusal(log, "uid may not call")
		go g.refuse(uc, cred.Uid)
		return nil
	}
	return &gatedConn{UnixConn: uc, cred: peerCred{uid: int(cred.Uid), pid: int(cred.Pid)}, release: func() { g.put(cred.Uid) }}
}

// logRefusal logs at most one refusal a second, so that a client looping
// on connect cannot flood the log; the metrics count every one.
func (g *gate) logRefusal(log *slog.Logger, reason string) {
	now := time.Now().UnixNano()
	last := g.lastLog.Load()
	if now-last < int64(time.Second) || !g.lastLog.CompareAndSwap(last, now) {
		return
	}
	log.Warn("connection refused", "reason", reason)
}

// take reserves a slot for uid, or says which limit it hit.
func (g *gate) take(uid uint32) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	trusted := g.access.trusted(int(uid))
	switch {
	case g.total >= g.limits.Total:
		return fmt.Sprintf("pierd holds its maximum of %d connections", g.limits.Total)
	case !trusted && g.byUID[uid] >= g.limits.PerUID:
		return fmt.Sprintf("uid %d holds its maximum of %d connections to pierd", uid, g.limits.PerUID)
	case !trusted && g.untrusted >= g.limits.Total/2:
		return fmt.Sprintf("users other than root hold their share (%d) of pierd's connections", g.limits.Total/2)
	}
	g.total++
	g.held.Store(int64(g.total))
	if !trusted {
		g.untrusted++
		g.byUID[uid]++
	}
	return ""
}

// open is how many connections the gate holds (admitted, or refused and
// lingering).
func (g *gate) open() int { return int(g.held.Load()) }

// put gives back the slot take reserved.
func (g *gate) put(uid uint32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	g.held.Store(int64(g.total))
	if !g.access.trusted(int(uid)) {
		g.untrusted--
		if g.byUID[uid]--; g.byUID[uid] <= 0 {
			delete(g.byUID, uid)
		}
	}
}

// refuse tells a uid that may not call why, waits (at most refusalLinger)
// for the client to close after reading it, and frees its slot. Closing at
// once could make the client's first write fail before it reads the
// answer, and it would report pierd as unreachable instead.
func (g *gate) refuse(c *net.UnixConn, uid uint32) {
	defer g.put(uid)
	goAway(c, http2.ErrCodeInadequateSecurity,
		fmt.Sprintf("pierd refuses uid %d: only root may call it (see pierd --allow-uid)", uid))
	_ = c.CloseWrite()                                   // ends our side; errors mean the client is gone already
	_ = c.SetReadDeadline(time.Now().Add(refusalLinger)) // as above
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	_ = c.Close() // nothing left to say
}

// goAway writes the HTTP/2 server preface (an empty SETTINGS) and a GOAWAY
// for no stream, with reason as its debug data. Best effort: the write is
// bounded so the accept loop never waits on a client.
func goAway(c net.Conn, code http2.ErrCode, reason string) {
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond)) // fails only on a closed conn
	fr := http2.NewFramer(c, nil)
	_ = errors.Join(fr.WriteSettings(), fr.WriteGoAway(0, code, []byte(reason))) // a client gone already needs no answer
}

// gatedConn is an admitted connection: its peer's credentials, and its
// slot, given back on the first Close.
type gatedConn struct {
	*net.UnixConn
	cred    peerCred
	release func()
	once    sync.Once
}

func (c *gatedConn) Close() error {
	c.once.Do(c.release)
	return c.UnixConn.Close()
}

// readPeerCred returns the credentials the kernel recorded at connect(2).
func readPeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}
