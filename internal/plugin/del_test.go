package plugin

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
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

// TestDelTearsDownLastContainersBridge guards the bridge teardown that DEL
// runs beside the veth's deletion: the setup (marker) stays while another
// container is on the bridge, goes with the last one, and comes back with
// the next ADD; and a DEL of the last container racing an ADD of a new one
// never leaves the new container on a bridge without its setup.
func TestDelTearsDownLastContainersBridge(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "tdnet", bridge: "pt-br9", subnet: "10.39.0.0/24", extra: `"isGateway":true,"ipMasq":true,`}
	ready := func() bool {
		t.Helper()
		st, err := nat.ReadBridge(c.bridge)
		if err != nil {
			t.Fatal(err)
		}
		return st.Ready
	}
	del := func(a attachment) {
		t.Helper()
		if _, err := n.do("DEL", a, c); err != nil {
			t.Fatal(err)
		}
	}
	a, b := n.container("td-a"), n.container("td-b")
	n.add(a, c)
	n.add(b, c)
	del(a)
	if !ready() {
		t.Fatal("the bridge's setup went while a container is still on it")
	}
	del(b)
	if ready() {
		t.Fatal("the bridge's setup stayed after its last container")
	}
	prev := n.container("td-0")
	n.add(prev, c)
	if !ready() {
		t.Fatal("the bridge's setup did not come back with an ADD")
	}
	for i := range 5 {
		next := n.container(fmt.Sprintf("td-%d", i+1))
		var wg sync.WaitGroup
		var addErr, delErr error
		wg.Go(func() { _, delErr = n.do("DEL", prev, c) })
		wg.Go(func() { _, addErr = n.do("ADD", next, c) })
		wg.Wait()
		if err := errors.Join(addErr, delErr); err != nil {
			t.Fatal(err)
		}
		if !ready() {
			t.Fatalf("round %d: the DEL of the last container and an ADD raced, and the new container's bridge lost its setup", i)
		}
		prev = next
	}
	del(prev)
	n.wantNothing(prev, c)
}
