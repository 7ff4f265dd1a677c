package lite

// A gRPC unary client over HTTP/2 with prior knowledge (h2c), on a unix
// socket: just what one plugin process needs to make a few sequential calls.
//
// It speaks the gRPC wire protocol as grpc-go's server expects it
// (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md): a POST
// to /<service>/<method> with content-type application/grpc, the request
// as one length-prefixed message, and the status in the trailers
// (grpc-status, grpc-message, grpc-status-details-bin). What it leaves out,
// because one short-lived process never needs it: TLS, streaming,
// compression, name resolution, load balancing, keepalives, retries beyond
// the initial connect, concurrent streams.
//
// # What it relies on instead of flow control
//
// HTTP/2 flow control lets a receiver stop a sender that outruns it. A
// plugin process makes a handful of calls whose messages are small (a GC
// listing every attachment of a network is the largest: ~75 bytes each),
// to one server that Pier configures itself, so the client does none:
//
//   - Receiving: it announces a window of 1 GiB for the connection and each
//     stream and never sends WINDOW_UPDATE; responses are capped at
//     maxResponse, and a connection that has received more than
//     recvWindow-maxResponse is not used for another call.
//   - Sending: it ignores the server's windows and WINDOW_UPDATEs. pierd
//     announces ServerWindow (8 MiB) for the connection and every stream
//     (grpc.InitialWindowSize, InitialConnWindowSize in package pierd) and
//     enforces that limit from the connection's first byte, so a request of
//     up to MaxRequest (4 MiB, also pierd's receive limit) always fits a
//     new stream's window; the connection's window is never short either,
//     since grpc-go gives back what it received once a quarter of the
//     window is used, and the client reads those updates before its
//     call's response. A larger request is refused before it is sent.
//     A server with HTTP/2's default 64 KiB windows would reset a request
//     larger than that: the plugin and pierd must come from one release.
//   - Frames are sent at HTTP/2's minimum maximum size (16 KiB), which
//     every server accepts, whatever SETTINGS_MAX_FRAME_SIZE it announces;
//     request headers always fit one frame (no CONTINUATION).
//
// What it still does, because the protocol requires it of every peer:
// acknowledge SETTINGS and PING, read padded frames and header blocks
// continued in CONTINUATION frames, and honour GOAWAY and RST_STREAM.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/http2/hpack"
)

// What pierd and this client agree on, so that the client needs no flow
// control (see the file comment). Package pierd configures its server
// with these.
const (
	// MaxRequest is the largest request message: pierd's receive limit
	// (grpc-go's default) and 1/2 of ServerWindow. A GC listing ~50,000
	// attachments fits.
	MaxRequest = 4 << 20
	// ServerWindow is the HTTP/2 flow-control window pierd announces for
	// its connections and their streams.
	ServerWindow = 8 << 20
)

const (
	clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	settingEnablePush        = 0x2
	settingInitialWindowSize = 0x4

	defaultWindow   = 65535
	defaultMaxFrame = 16384
	recvWindow      = 1 << 30
	// maxFrameRead bounds what a frame may make us allocate: we announce
	// no SETTINGS_MAX_FRAME_SIZE, so the server's frames are 16 KiB at most.
	maxFrameRead = defaultMaxFrame
	// maxResponse bounds a response message.
	maxResponse = 64 << 20
)

// errUnavailable marks failures where the server cannot have acted on the
// call (no connection, or a GOAWAY before our stream): the caller may say
// "try again later" with certainty.
var errUnavailable = errors.New("pierd unavailable")

// errRefused marks a connection pierd refused for good: the caller's uid
// may not call it (GOAWAY INADEQUATE_SECURITY). Retrying cannot help.
var errRefused = errors.New("pierd refused the connection")

// errCodeInadequateSecurity is the HTTP/2 error code of the GOAWAY pierd
// sends, before any stream, to a uid that may not call. Any other GOAWAY
// code (ENHANCE_YOUR_CALM: too many connections; NO_ERROR: pierd stops)
// means "not now".
const errCodeInadequateSecurity = 0xc

// goAwayError is the error of a call whose stream the server refused with
// a GOAWAY, saying why in its debug data when it did.
func goAwayError(code uint32, debug []byte) error {
	why := "the server is going away"
	if len(debug) > 0 {
		why = printable(debug)
	}
	if code == errCodeInadequateSecurity {
		return fmt.Errorf("%w: %s", errRefused, why)
	}
	return fmt.Errorf("%w: %s", errUnavailable, why)
}

// printable is the server's debug text, bounded and without control
// characters, for an error message.
func printable(b []byte) string {
	s := []rune(string(b[:min(len(b), 256)]))
	for i, r := range s {
		if r < 0x20 || r == 0x7f {
			s[i] = '?'
		}
	}
	return string(s)
}

// rpcStatus is a gRPC status received in a response's trailers.
type rpcStatus struct {
	Code    int // gRPC code; 0 is OK
	Message string
	Details []byte // grpc-status-details-bin: a google.rpc.Status message
}

func (s *rpcStatus) Error() string {
	return fmt.Sprintf("gRPC status %d: %s", s.Code, s.Message)
}

// codeOK is the gRPC status code of success; package rpcerr maps the
// others.
const codeOK = 0

// h2conn is one HTTP/2 connection used for sequential unary calls.
type h2conn struct {
	c      net.Conn
	r      *bufio.Reader
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	dec    *hpack.Decoder

	nextID   uint32
	received int64 // DATA bytes received, against our 1 GiB window
	goAway   bool  // the server is going away: no new streams here
	// alive: a frame has come from the server. Until then reads are bound
	// by connectBy, and a failure counts as "could not connect".
	alive        bool
	connectBy    time.Time
	callDeadline time.Time

	hdr [9]byte
}

// dialH2 connects to the unix socket at path, retrying while it is missing
// or refuses connections (pierd is starting or restarting) until ctx ends,
// and sends the client preface. It does not wait for the server's: the
// first call's request follows at once, and its first read is bounded by
// connectBy, so a pierd that accepts but never answers (stopped, wedged, or
// killed with connections in its backlog) still fails within the connect
// budget, without a round trip spent on a handshake.
func dialH2(ctx context.Context, path string, connectBy time.Time) (*h2conn, error) {
	c, err := dialRetry(ctx, path)
	if err != nil {
		return nil, err
	}
	h := newConn(c, connectBy)
	if err := h.writePreface(); err != nil {
		_ = c.Close() // the write error says what went wrong
		return nil, err
	}
	return h, nil
}

func newConn(c net.Conn, connectBy time.Time) *h2conn {
	h := &h2conn{
		c: c, r: newReader(c), nextID: 1, connectBy: connectBy,
	}
	h.enc, h.dec = newHpack(h)
	return h
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReaderSize(c, 32<<10) }

// newHpack returns h's header encoder (writing into h.encBuf) and decoder,
// whose strings are bounded like the header blocks that carry them.
func newHpack(h *h2conn) (*hpack.Encoder, *hpack.Decoder) {
	dec := hpack.NewDecoder(4096, nil)
	dec.SetMaxStringLength(maxFrameRead * 4)
	return hpack.NewEncoder(&h.encBuf), dec
}

// backoff of the connect retry: start at 10 ms, double, at most 200 ms. A
// pierd restart takes tens of milliseconds, so the first retries are close.
const (
	backoffFirst = 10 * time.Millisecond
	backoffMax   = 200 * time.Millisecond
)

// dialRetry connects with net.DialUnix rather than a net.Dialer: the latter
// links the DNS resolver (~200 KB) into the plugins, and a unix-socket
// connect(2) never blocks anyway (it succeeds or fails at once).
func dialRetry(ctx context.Context, path string) (net.Conn, error) {
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	wait := backoffFirst
	for {
		c, err := net.DialUnix("unix", nil, addr)
		if err == nil {
			if err := checkServer(c, path); err != nil {
				return nil, errors.Join(err, c.Close())
			}
			return c, nil
		}
		if !retryableDial(err) {
			return nil, err
		}
		if !sleep(ctx, wait) {
			return nil, fmt.Errorf("%w: %w (last: %w)", errUnavailable, ctx.Err(), err)
		}
		wait = min(2*wait, backoffMax)
	}
}

// retryableDial: the socket is not there yet, is stale, or its backlog is
// full; each goes away when pierd (re)starts or catches up.
func retryableDial(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EAGAIN)
}

// writePreface sends the connection preface and our SETTINGS; until the
// server's first frame arrives, the connection is on probation (see alive).
func (h *h2conn) writePreface() error {
	_ = h.c.SetDeadline(h.connectBy) // fails only on a closed conn, which Write reports
	var b []byte
	b = append(b, clientPreface...)
	settings := binary.BigEndian.AppendUint16(nil, settingEnablePush)
	settings = binary.BigEndian.AppendUint32(settings, 0)
	settings = binary.BigEndian.AppendUint16(settings, settingInitialWindowSize)
	settings = binary.BigEndian.AppendUint32(settings, recvWindow)
	b = appendFrame(b, frameSettings, 0, 0, settings)
	b = appendFrame(b, frameWindowUpdate, 0, 0, binary.BigEndian.AppendUint32(nil, recvWindow-defaultWindow))
	if _, err := h.c.Write(b); err != nil {
		return fmt.Errorf("send preface: %w", err)
	}
	return nil
}

// setDeadline bounds the call's I/O by ctx, and by connectBy while the
// server has not been heard from on this connection.
func (h *h2conn) setDeadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(CallTimeout)
	}
	h.callDeadline = dl
	if !h.alive && h.connectBy.Before(dl) {
		dl = h.connectBy
	}
	_ = h.c.SetDeadline(dl) // fails only on a closed conn, which the next I/O reports
}

// call performs one unary call: method is "/pier.ipam.v1.IPAM/Allocate".
// A non-OK status is returned as *rpcStatus.
func (h *h2conn) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	if h.goAway {
		return nil, fmt.Errorf("%w: the server is shutting down this connection", errUnavailable)
	}
	h.setDeadline(ctx)
	s := &stream{id: h.nextID}
	h.nextID += 2
	if err := h.writeRequest(ctx, s.id, method, req); err != nil {
		return nil, err
	}
	for !s.done {
		if err := h.step(s); err != nil {
			return nil, err
		}
	}
	return s.result()
}

// spent says the connection has received so much that the window we
// announced might not hold another response.
func (h *h2conn) spent() bool { return h.received > recvWindow-maxResponse }

// stream is the state of the one call in flight.
type stream struct {
	id     uint32
	done   bool
	data   []byte
	status *rpcStatus
	err    error
}

// writeRequest sends the request in one write: a HEADERS frame, then the
// length-prefixed message in DATA frames of at most defaultMaxFrame bytes,
// the last one ending the stream. See the file comment for why the
// server's windows need no watching.
func (h *h2conn) writeRequest(ctx context.Context, id uint32, method string, req []byte) error {
	block, err := h.encodeHeaders(ctx, method)
	if err != nil {
		return err
	}
	body := make([]byte, 5, 5+len(req))
	binary.BigEndian.PutUint32(body[1:], uint32(len(req)))
	body = append(body, req...)
	b := make([]byte, 0, 9+len(block)+len(body)+9*(len(body)/defaultMaxFrame+1))
	b = appendFrame(b, frameHeaders, flagEndHeaders, id, block)
	for len(body) > 0 {
		n, flags := min(len(body), defaultMaxFrame), byte(0)
		if n == len(body) {
			flags = flagEndStream
		}
		b = appendFrame(b, frameData, flags, id, body[:n])
		body = body[n:]
	}
	if _, err := h.c.Write(b); err != nil {
		return h.ioError("send request", err)
	}
	return nil
}

// encodeHeaders returns the request's header block, which is always far
// below one frame: the longest field is the method's path.
func (h *h2conn) encodeHeaders(ctx context.Context, method string) ([]byte, error) {
	h.encBuf.Reset()
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: method},
		{Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "te", Value: "trailers"},
		{Name: "user-agent", Value: "pier-lite/1"},
	}
	if dl, ok := ctx.Deadline(); ok {
		fields = append(fields, hpack.HeaderField{Name: "grpc-timeout", Value: grpcTimeout(time.Until(dl))})
	}
	for _, f := range fields {
		if err := h.enc.WriteField(f); err != nil {
			return nil, err
		}
	}
	return h.encBuf.Bytes(), nil
}

// grpcTimeout renders d as a grpc-timeout value: at most 8 digits and a unit.
func grpcTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n"
	}
	ms := d.Milliseconds()
	if ms < 1 {
		return strconv.FormatInt(d.Microseconds()+1, 10) + "u"
	}
	if ms < 1e8 {
		return strconv.FormatInt(ms, 10) + "m"
	}
	return strconv.FormatInt(min(int64(d/time.Second), 99999999), 10) + "S"
}

// step reads one frame and applies it to the connection or to s.
func (h *h2conn) step(s *stream) error {
	typ, flags, id, payload, err := h.readFrame()
	if err != nil {
		return h.ioError("read response", err)
	}
	if id == 0 {
		return h.handleConnFrame(typ, flags, payload)
	}
	switch typ {
	case frameHeaders:
		block, err := h.headerBlock(flags, payload)
		if err != nil {
			return err
		}
		fields, err := h.dec.DecodeFull(block)
		if err != nil {
			return fmt.Errorf("decode response headers: %w", err)
		}
		if id == s.id {
			s.headers(fields)
		}
	case frameData:
		h.received += int64(len(payload)) // all of it counts against our window
		if id == s.id {
			p, err := unpad(flags, payload)
			if err != nil {
				return err
			}
			if len(s.data)+len(p) > maxResponse {
				return fmt.Errorf("response larger than %d bytes", maxResponse)
			}
			s.data = append(s.data, p...)
		}
	case frameRSTStream:
		if id == s.id && !s.done {
			code := uint32(0)
			if len(payload) >= 4 {
				code = binary.BigEndian.Uint32(payload)
			}
			s.done, s.err = true, fmt.Errorf("the server reset the call (HTTP/2 error %d)", code)
		}
		return nil
	}
	if id == s.id && flags&flagEndStream != 0 && (typ == frameHeaders || typ == frameData) {
		s.done = true
	}
	return nil
}

// headerBlock joins a HEADERS frame's fragment with its CONTINUATION
// frames, dropping padding and priority fields.
func (h *h2conn) headerBlock(flags byte, payload []byte) ([]byte, error) {
	p, err := unpad(flags, payload)
	if err != nil {
		return nil, err
	}
	if flags&flagPriority != 0 {
		if len(p) < 5 {
			return nil, errors.New("short HEADERS frame")
		}
		p = p[5:]
	}
	block := append([]byte(nil), p...)
	for flags&flagEndHeaders == 0 {
		var typ byte
		typ, flags, _, p, err = h.readFrame()
		if err != nil {
			return nil, h.ioError("read response headers", err)
		}
		if typ != frameContinuation {
			return nil, fmt.Errorf("HTTP/2 frame type %d inside a header block", typ)
		}
		if len(block)+len(p) > maxFrameRead*4 {
			return nil, errors.New("response header block too large")
		}
		block = append(block, p...)
	}
	return block, nil
}

// handleConnFrame applies a frame of stream 0.
func (h *h2conn) handleConnFrame(typ, flags byte, payload []byte) error {
	switch typ {
	case frameSettings:
		if flags&flagAck == 0 {
			return h.applySettings(payload)
		}
	case framePing:
		if flags&flagAck == 0 {
			if _, err := h.c.Write(appendFrame(nil, framePing, flagAck, 0, payload)); err != nil {
				return h.ioError("answer ping", err)
			}
		}
	case frameGoAway:
		if len(payload) >= 8 {
			h.goAway = true
			if last := binary.BigEndian.Uint32(payload) & 0x7fffffff; last < h.nextID-2 {
				// Our stream (nextID-2) was not and will not be processed.
				return goAwayError(binary.BigEndian.Uint32(payload[4:]), payload[8:])
			}
		}
	}
	return nil
}

// applySettings acknowledges the server's SETTINGS; none of them changes
// what this client sends (see the file comment).
func (h *h2conn) applySettings(p []byte) error {
	if len(p)%6 != 0 {
		return errors.New("malformed HTTP/2 SETTINGS frame")
	}
	// A failed write is not the call's end yet: what the server sent before
	// closing (a GOAWAY saying why) can still be read, and the next read
	// reports the broken connection otherwise.
	_, _ = h.c.Write(appendFrame(nil, frameSettings, flagAck, 0, nil))
	return nil
}

// readFrame reads one frame; its payload is valid until the next read.
func (h *h2conn) readFrame() (typ, flags byte, id uint32, payload []byte, err error) {
	if _, err = io.ReadFull(h.r, h.hdr[:]); err != nil {
		return 0, 0, 0, nil, err
	}
	n := int(h.hdr[0])<<16 | int(h.hdr[1])<<8 | int(h.hdr[2])
	if n > maxFrameRead {
		return 0, 0, 0, nil, fmt.Errorf("HTTP/2 frame of %d bytes exceeds %d", n, maxFrameRead)
	}
	typ, flags = h.hdr[3], h.hdr[4]
	id = binary.BigEndian.Uint32(h.hdr[5:]) & 0x7fffffff
	payload = make([]byte, n)
	if _, err = io.ReadFull(h.r, payload); err != nil {
		return 0, 0, 0, nil, err
	}
	if !h.alive {
		h.alive = true
		_ = h.c.SetDeadline(h.callDeadline) // as in setDeadline
	}
	return typ, flags, id, payload, nil
}

func (h *h2conn) close() error { return h.c.Close() }

// ioError names what failed; a timeout says the deadline passed.
func (h *h2conn) ioError(what string, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%s: pierd did not answer in time: %w", what, context.DeadlineExceeded)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func appendFrame(b []byte, typ, flags byte, id uint32, payload []byte) []byte {
	n := len(payload)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, payload...)
}

func unpad(flags byte, p []byte) ([]byte, error) {
	if flags&flagPadded == 0 {
		return p, nil
	}
	if len(p) < 1 || int(p[0]) >= len(p) {
		return nil, errors.New("malformed HTTP/2 padding")
	}
	return p[1 : len(p)-int(p[0])], nil
}

// headers records a HEADERS block of the call: the response headers, or
// the trailers (the status), or both in a trailers-only response.
func (s *stream) headers(fields []hpack.HeaderField) {
	for _, f := range fields {
		switch f.Name {
		case ":status":
			if f.Value != "200" {
				s.err = fmt.Errorf("HTTP status %s from pierd", f.Value)
			}
		case "grpc-status":
			code, err := strconv.Atoi(f.Value)
			if err != nil {
				code = 2 // Unknown
			}
			if s.status == nil {
				s.status = &rpcStatus{}
			}
			s.status.Code = code
		case "grpc-message":
			if s.status == nil {
				s.status = &rpcStatus{}
			}
			s.status.Message = percentDecode(f.Value)
		case "grpc-status-details-bin":
			if s.status == nil {
				s.status = &rpcStatus{}
			}
			s.status.Details = decodeBin(f.Value)
		}
	}
}

// result is the call's outcome once the stream has ended.
func (s *stream) result() ([]byte, error) {
	switch {
	case s.err != nil && s.status == nil:
		return nil, s.err
	case s.status == nil:
		return nil, errors.New("pierd ended the call without a gRPC status")
	case s.status.Code != codeOK:
		return nil, s.status
	}
	// One length-prefixed, uncompressed message.
	d := s.data
	if len(d) < 5 || d[0] != 0 || int(binary.BigEndian.Uint32(d[1:])) != len(d)-5 {
		return nil, errors.New("malformed gRPC response message")
	}
	return d[5:], nil
}

// percentDecode undoes grpc-message's percent-encoding.
func percentDecode(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// decodeBin decodes a -bin header: base64, padded or not.
func decodeBin(v string) []byte {
	if b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "=")); err == nil {
		return b
	}
	return nil // undecodable details: the status code and message remain
}
