package plugin

import (
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

// TestDelPolicy: DEL is idempotent and succeeds whatever is already gone
// (the netns, the interface, the address), refuses the node's own
// namespace, and fails — before removing anything — only when IPAM cannot
// say what the attachment holds; a DEL whose release fails keeps the
// address and succeeds when retried.
func TestDelPolicy(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "delnet", bridge: "pt-br3", subnet: "10.34.0.0/24", extra: `"isGateway":true,"ipMasq":true,`}
	t.Run("twice", func(t *testing.T) {
		n.t = t
		a := n.container("del-twice")
		res := n.add(a, c)
		for range 2 {
			if _, err := n.do("DEL", a, withPrev(t, c, res)); err != nil {
				t.Fatal(err)
			}
		}
		n.wantNothing(a, c)
	})
	t.Run("netns gone", func(t *testing.T) {
		n.t = t
		a := n.container("del-nsgone")
		n.add(a, c)
		a.ns.Delete(t) // the runtime removed the sandbox first
		if _, err := n.do("DEL", a, c); err != nil {
			t.Fatal(err)
		}
		n.wantNothing(attachment{id: a.id, ifName: a.ifName}, c)
	})
	t.Run("empty CNI_NETNS", func(t *testing.T) {
		n.t = t
		a := n.container("del-nonetns")
		n.add(a, c)
		if _, err := n.doIn("DEL", a, c, ""); err != nil {
			t.Fatal(err)
		}
		if s := n.state(a, c); s.hostVeth || len(s.reserved) > 0 || len(s.masq) > 0 {
			t.Fatalf("after DEL without a netns: %+v", s)
		}
	})
	t.Run("node's own namespace", func(t *testing.T) {
		n.t = t
		a := n.container("del-node")
		n.add(a, c)
		_, err := n.doIn("DEL", a, c, n.sb.Node.Path)
		wantCode(t, err, cnierr.InvalidEnv, "the node's")
		if s := n.state(a, c); !s.hostVeth || len(s.reserved) != 1 || len(s.masq) != 1 {
			t.Fatalf("a refused DEL removed something: %+v", s)
		}
	})
	t.Run("IPAM cannot tell what is held", func(t *testing.T) {
		n.t = t
		a := n.container("del-ipamdown")
		n.add(a, c)
		n.alloc.set(func(f *faultyAllocator) { f.failCheck = cnierr.New(cnierr.TryAgainLater, "pierd is unreachable") })
		defer n.alloc.reset()
		_, err := n.do("DEL", a, c)
		wantCode(t, err, cnierr.TryAgainLater, "pierd is unreachable")
		if s := n.state(a, c); !s.hostVeth || !s.containerLink || len(s.reserved) != 1 || len(s.masq) != 1 {
			t.Fatalf("a DEL that could not ask IPAM removed something: %+v", s)
		}
	})
	t.Run("release fails", func(t *testing.T) {
		n.t = t
		a := n.container("del-relfail")
		n.add(a, c)
		n.alloc.set(func(f *faultyAllocator) { f.failRelease = cnierr.New(cnierr.TryAgainLater, "store busy") })
		_, err := n.do("DEL", a, c)
		n.alloc.reset()
		wantCode(t, err, cnierr.TryAgainLater, "store busy")
		if s := n.state(a, c); s.hostVeth || len(s.reserved) != 1 {
			t.Fatalf("after a DEL whose release failed: %+v, want the links gone and the address still held", s)
		}
		if _, err := n.do("DEL", a, c); err != nil {
			t.Fatal(err)
		}
		n.wantNothing(a, c)
	})
}
