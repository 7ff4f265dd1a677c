package lite

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzH2Response: whatever comes back on the socket, a call ends with a
// result or an error within its deadline, and never panics.
func FuzzH2Response(f *testing.F) {
	settings := appendFrame(nil, frameSettings, 0, 0, nil)
	okHeaders := appendFrame(nil, frameHeaders, flagEndHeaders, 1, []byte{0x88}) // :status 200 (static index 8)
	f.Add(settings)
	f.Add(append(append([]byte{}, settings...), okHeaders...))
	f.Add(append(append([]byte{}, settings...), appendFrame(nil, frameGoAway, 0, 0, make([]byte, 8))...))
	f.Add(append(append([]byte{}, settings...), appendFrame(nil, frameData, flagPadded|flagEndStream, 1, []byte{200, 1})...))
	f.Add(append(append([]byte{}, settings...), appendFrame(nil, frameHeaders, 0, 1, []byte{0x88})...))
	f.Fuzz(func(t *testing.T, server []byte) {
		cli, srv := net.Pipe()
		defer cli.Close()
		go func() {
			defer srv.Close()
			go func() { _, _ = io.Copy(io.Discard, srv) }() // the client's writes
			_, _ = srv.Write(server)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		h := newConn(cli, time.Now().Add(100*time.Millisecond))
		if err := h.writePreface(); err != nil {
			return
		}
		_, _ = h.call(ctx, "/pier.ipam.v1.IPAM/Check", []byte{1, 2, 3})
	})
}
