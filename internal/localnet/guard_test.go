package localnet

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// sandbox is a node with a bridge (10.77.0.1/24) and one container behind
// it that routes 127.0.0.1 to the bridge, as an attacker would; the node
// serves on 127.0.0.1:9999 and on 10.77.0.1:9998.
type sandbox struct {
	node, ctr *testnet.NS
}

func newSandbox(t *testing.T) sandbox {
	t.Helper()
	sb := testnet.New(t)
	s := sandbox{node: sb.Node, ctr: sb.Container()}
	s.node.MustRun(t, "ip", "link", "add", "pt-br0", "type", "bridge")
	s.node.MustRun(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "pt-br0")
	s.node.MustRun(t, "ip", "link", "add", "pt-h0", "type", "veth", "peer", "name", "eth0", "netns", s.ctr.Name)
	s.node.MustRun(t, "ip", "link", "set", "pt-h0", "master", "pt-br0", "up")
	s.node.MustRun(t, "ip", "link", "set", "pt-br0", "up")
	s.node.MustRun(t, "ip", "link", "set", "lo", "up")
	// The container's own 127.0.0.1 goes, with its local routes, so that
	// 127.0.0.1 is routed to the bridge and the node's replies from it
	// are no martians.
	s.ctr.MustRun(t, "ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
	s.ctr.MustRun(t, "ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
	s.ctr.MustRun(t, "ip", "link", "set", "eth0", "up")
	s.ctr.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
	s.ctr.MustRun(t, "ip", "route", "add", "127.0.0.1/32", "via", "10.77.0.1", "dev", "eth0", "src", "10.77.0.2")
	for _, addr := range []string{"127.0.0.1:9999", "10.77.0.1:9998"} {
		var l net.Listener
		if err := s.node.Do(func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
	}
	return s
}

// reaches reports whether the container connects to addr.
func (s sandbox) reaches(t *testing.T, addr string) bool {
	t.Helper()
	var err error
	if derr := s.ctr.Do(func() error {
		var c net.Conn
		c, err = net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return nil
	}); derr != nil {
		t.Fatal(derr)
	}
	return err == nil
}

func (s sandbox) do(t *testing.T, f func() error) {
	t.Helper()
	if err := s.node.Do(f); err != nil {
		t.Fatal(err)
	}
}

// TestGuard: with route_localnet on the bridge, a container reaches the
// node's 127.0.0.1 (CVE-2020-8558) unless the guard is on, and nothing a
// netfilter flush does takes the guard away. Traffic to the node's own
// address on the bridge is not the guard's business. Disable turns the
// sysctl off and takes the guard away.
func TestGuard(t *testing.T) {
	s := newSandbox(t)
	s.node.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.pt-br0.route_localnet=1")
	if !s.reaches(t, "127.0.0.1:9999") {
		t.Fatal("without the guard the container does not reach the node's 127.0.0.1: the test shows nothing")
	}
	s.do(t, func() error { return Enable("pt-br0") })
	s.do(t, func() error { return Enable("pt-br0") }) // once is enough
	if out := s.node.MustRun(t, "tc", "filter", "show", "dev", "pt-br0", "ingress"); strings.Count(out, Name) != 1 {
		t.Errorf("the bridge's ingress filters, after two Enables:\n%s", out)
	}
	if s.reaches(t, "127.0.0.1:9999") {
		t.Error("with the guard, the container reached the node's 127.0.0.1")
	}
	s.node.MustRun(t, "nft", "flush", "ruleset")
	if s.reaches(t, "127.0.0.1:9999") {
		t.Error("after nft flush ruleset, the container reached the node's 127.0.0.1")
	}
	if !s.reaches(t, "10.77.0.1:9998") {
		t.Error("the guard kept the container from the node's address on the bridge")
	}
	var on, present bool
	s.do(t, func() (err error) {
		if on, err = Enabled("pt-br0"); err == nil {
			present, err = Present("pt-br0")
		}
		return err
	})
	if !on || !present {
		t.Errorf("Enabled %v, Present %v after Enable", on, present)
	}
	s.do(t, func() error { return Disable("pt-br0") })
	s.do(t, func() (err error) {
		if on, err = Enabled("pt-br0"); err == nil {
			present, err = Present("pt-br0")
		}
		return err
	})
	if on || present {
		t.Errorf("Enabled %v, Present %v after Disable", on, present)
	}
	if s.reaches(t, "127.0.0.1:9999") {
		t.Error("with route_localnet off, the container reached the node's 127.0.0.1")
	}
	s.do(t, func() error { return Disable("pt-gone") }) // a missing bridge has nothing to turn off
}

// TestRouted: an address is behind the bridge when the node routes it out
// of the bridge; a default route through it does not count.
func TestRouted(t *testing.T) {
	s := newSandbox(t)
	s.node.MustRun(t, "ip", "route", "add", "default", "via", "10.77.0.254", "dev", "pt-br0")
	for _, tc := range []struct {
		addrs []string
		want  bool
	}{
		{[]string{"10.77.0.2"}, true},
		{[]string{"198.51.100.7", "10.77.0.9"}, true},
		{[]string{"198.51.100.7"}, false},
		{nil, false},
	} {
		var addrs []netip.Addr
		for _, a := range tc.addrs {
			addrs = append(addrs, netip.MustParseAddr(a))
		}
		var got bool
		s.do(t, func() (err error) { got, err = Routed("pt-br0", addrs); return err })
		if got != tc.want {
			t.Errorf("Routed(%v) = %v, want %v", tc.addrs, got, tc.want)
		}
	}
}
