package dataplane

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/pier-cni/pier/internal/testnet"
)

// nodeNS is a throwaway node namespace and a data plane acting in it.
type nodeNS struct {
	ns *testnet.NS
	fd int
	dp *DataPlane
}

func newNodeNS(t *testing.T) *nodeNS {
	t.Helper()
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "pt-np-")
	f, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fd := int(f.Fd())
	return &nodeNS{ns: ns, fd: fd, dp: New(InNetNS(fd))}
}

func (n *nodeNS) list(t *testing.T) string {
	t.Helper()
	return n.ns.MustRun(t, "nft", "list", "table", "inet", TableName)
}

var (
	podA = Ref{"x", "a"}
	podB = Ref{"y", "b"}
	polP = Ref{"x", "p"}
)

func exampleState() State {
	sel := SelectorSetName("namespace y pods(pod=b)")
	return State{
		Sets: []SetMembers{
			{SetSpec: SetSpec{Name: sel, Kind: Addresses, Comment: "pier: pods pod=b of namespace y"},
				Members: []Member{{Addr: netip.MustParseAddr("10.244.2.3"), Pod: podB}, {Addr: netip.MustParseAddr("fd00::3"), Pod: podB}}},
			{SetSpec: SetSpec{Name: PortSetName("http"), Kind: PortTuples, Comment: "pier: container ports named http"},
				Members: []Member{{Addr: netip.MustParseAddr("10.244.1.2"), Proto: TCP, Port: 8080, Pod: podA}}},
		},
		Policies: []PolicyChain{{Policy: polP, Dir: Ingress, Rules: []Rule{
			{Peers: []Peer{{Set: sel}}, Ports: []Port{{Proto: TCP, First: 80, Last: 81}, {Proto: TCP, Name: "http"}}},
			{Peers: []Peer{{CIDR: netip.MustParsePrefix("198.51.100.0/24"), Except: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")}}}},
		}}},
		Pods: []PodChain{
			{Pod: podA, Dir: Ingress, Verdict: Isolated, Policies: []Ref{polP}},
			{Pod: podA, Dir: Egress, Verdict: Open},
		},
		Pointers: []Pointer{{Addr: netip.MustParseAddr("10.244.1.2"), Pod: podA}},
	}
}

// TestResyncInstallsWhatNftReads writes a state into an empty namespace
// and reads it back with nft: the kernel accepted every object, nft can
// print them, and the rules say what the model says.
func TestResyncInstallsWhatNftReads(t *testing.T) {
	n := newNodeNS(t)
	left, err := n.dp.Resync(exampleState())
	if err != nil || len(left) != 0 {
		t.Fatalf("resync: %v (left %v)", err, left)
	}
	out := n.list(t)
	for _, want := range []string{
		"chain np-forward-egress", "type filter hook forward priority filter; policy accept;",
		"ct state established,related accept",
		"ip saddr vmap @np-egress4", "ip6 daddr vmap @np-ingress6",
		"chain np-pod-x/a-in", "jump np-pol-x/p-in", `drop comment "pier: pod x/a is isolated for ingress"`,
		"chain np-pod-x/a-eg", `accept comment "pier: pod x/a: no policy isolates it for egress"`,
		"ip saddr @" + SelectorSetName("namespace y pods(pod=b)") + "-4",
		"ip daddr . meta l4proto . tcp dport @np-port-http-4",
		"ip saddr 198.51.100.0/24 ip saddr != 198.51.100.7",
		"10.244.1.2 comment \"pierd: x/a\" : goto np-pod-x/a-in",
		"10.244.2.3 comment \"y/b\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("nft list lacks %q:\n%s", want, out)
		}
	}
	// nft can load what it printed: the ruleset round-trips.
	saved := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(saved, []byte(n.ns.MustRun(t, "nft", "list", "ruleset")), 0o600); err != nil {
		t.Fatal(err)
	}
	n.ns.MustRun(t, "nft", "flush", "ruleset")
	if out, err := n.ns.Run("nft", "-f", saved); err != nil {
		t.Errorf("nft cannot load its own listing of the policy objects: %v\n%s", err, out)
	}
}

// TestResyncIsIdempotentAndRemovesStale: a second resync with less
// removes what is no longer wanted (policy chain, sets), turns the chain
// of a pod it no longer knows into a drop and removes it once nothing
// leads to it.
func TestResyncIsIdempotentAndRemovesStale(t *testing.T) {
	n := newNodeNS(t)
	s := exampleState()
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	first := n.list(t)
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	if again := n.list(t); again != first {
		t.Errorf("a second resync changed the table:\n%s\n---\n%s", first, again)
	}
	// The plugin's element for another address of x/a (its DEL has not
	// run) keeps x/a's ingress chain in use.
	plugin := &Attachment{Pod: podA, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Owner: "net/c1/eth0"}
	if err := addWithFallback(t, n, plugin); err != nil || plugin.Unclassified() {
		t.Fatalf("plugin add: %v (unclassified %v)", err, plugin.Unclassified())
	}
	// x/a is forgotten: its chains drop; the element pierd added for it
	// goes, the plugin's stays, and so does the chain it leads to.
	left, err := n.dp.Resync(State{})
	if err != nil {
		t.Fatal(err)
	}
	out := n.list(t)
	names := func(cs []PodChain) (out []string) {
		for _, c := range cs {
			out = append(out, c.Name())
		}
		return out
	}
	if got := strings.Join(names(left), ","); got != "np-pod-x/a-eg,np-pod-x/a-in" && got != "np-pod-x/a-in,np-pod-x/a-eg" {
		t.Errorf("stale chains left: %v, want x/a's two (the plugin's elements lead there)", got)
	}
	for _, gone := range []string{"np-pol-x/p-in", "np-sel-", "np-port-http", "pierd: x/a"} {
		if strings.Contains(out, gone) {
			t.Errorf("%s still there after a resync without it:\n%s", gone, out)
		}
	}
	if !strings.Contains(out, `drop comment "pier: pod x/a is gone"`) {
		t.Errorf("the stale pod chain does not drop:\n%s", out)
	}
	// Once the plugin's DEL removed its elements, the chains can go.
	if left, err := n.dp.RemovePods(left); err != nil || len(left) != 2 {
		t.Errorf("removed a chain still in use: %v, left %v", err, left)
	}
	if err := RemoveElements(plugin.Addrs, InNetNS(n.fd)); err != nil {
		t.Fatal(err)
	}
	if left, err := n.dp.RemovePods(left); err != nil || len(left) != 0 {
		t.Errorf("remove pods: %v, left %v", err, left)
	}
	if out := n.list(t); strings.Contains(out, "np-pod-") {
		t.Errorf("pod chain still there:\n%s", out)
	}
}

// TestAttachmentFallsBackAndPierdRepoints is the ADD path: without the
// pod's chains the addresses lead to np-unclassified (and the base objects
// are created); once pierd has the chains, a pointer moves them over.
func TestAttachmentFallsBackAndPierdRepoints(t *testing.T) {
	n := newNodeNS(t)
	addr := netip.MustParseAddr("10.244.1.2")
	a := &Attachment{Pod: podA, Addrs: []netip.Addr{addr}, Owner: "net/c1/eth0"}
	if err := addWithFallback(t, n, a); err != nil {
		t.Fatal(err)
	}
	if !a.Unclassified() {
		t.Errorf("no chains yet, but the attachment is classified")
	}
	els, err := ListElements(InNetNS(n.fd))
	if err != nil || len(els) != 2 || els[0].Chain != ChainUnclassified || els[1].Chain != ChainUnclassified {
		t.Fatalf("elements %+v (%v), want two leading to %s", els, err, ChainUnclassified)
	}
	s := exampleState()
	s.Pointers = nil
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	if err := n.dp.Apply(Delta{Pointers: []Pointer{{Addr: addr, Pod: podA}}}); err != nil {
		t.Fatal(err)
	}
	els, _ = ListElements(InNetNS(n.fd))
	if len(els) != 2 || els[0].Chain != "np-pod-x/a-in" || els[1].Chain != "np-pod-x/a-eg" || els[0].Owner != "net/c1/eth0" {
		t.Fatalf("after the pointer: %+v, want the pod's chains, comment kept", els)
	}
	// A pointer for an address without element adds nothing: the plugin
	// owns the elements' lifetime.
	if err := n.dp.Apply(Delta{Pointers: []Pointer{{Addr: netip.MustParseAddr("10.244.1.9"), Pod: podA}}}); err != nil {
		t.Fatal(err)
	}
	if els, _ := ListElements(InNetNS(n.fd)); len(els) != 2 {
		t.Errorf("a pointer created elements: %+v", els)
	}
	// Unpoint leaves the plugin's elements alone (its DEL removes them),
	// and removes those pierd added itself after a flushed table.
	extra := netip.MustParseAddr("10.244.1.7")
	s.Pointers = []Pointer{{Addr: addr, Pod: podA}, {Addr: extra, Pod: podA}}
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	if els, _ := ListElements(InNetNS(n.fd)); len(els) != 4 {
		t.Fatalf("resync did not add pierd's elements for %s: %+v", extra, els)
	}
	if err := n.dp.Apply(Delta{Unpoint: []Pointer{{Addr: addr, Pod: podA}, {Addr: extra, Pod: podA}}}); err != nil {
		t.Fatal(err)
	}
	if els, _ := ListElements(InNetNS(n.fd)); len(els) != 2 || els[0].Addr != addr {
		t.Fatalf("after unpoint: %+v, want the plugin's two elements of %s", els, addr)
	}
	if err := RemoveElements([]netip.Addr{addr, addr}, InNetNS(n.fd)); err != nil {
		t.Fatal(err)
	}
	if err := RemoveElements([]netip.Addr{addr}, InNetNS(n.fd)); err != nil {
		t.Errorf("a second removal failed: %v", err)
	}
	if els, _ := ListElements(InNetNS(n.fd)); len(els) != 0 {
		t.Errorf("elements left: %+v", els)
	}
}

// TestPierdElementsFollowTheOwner guards policies against an address
// that moves between pods while pierd holds the element for it (put back
// by a resync after a flushed table): the element leads to the chains of
// the pod the engine names, not to those of whichever pod it was first
// written for; the plugin's own elements stay as the plugin wrote them.
func TestPierdElementsFollowTheOwner(t *testing.T) {
	n := newNodeNS(t)
	s := exampleState()
	s.Pods = append(s.Pods, PodChain{Pod: podB, Dir: Ingress, Verdict: Open}, PodChain{Pod: podB, Dir: Egress, Verdict: Open})
	addr := netip.MustParseAddr("10.244.1.7")
	s.Pointers = []Pointer{{Addr: addr, Pod: podA}}
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	if err := n.dp.Apply(Delta{Pointers: []Pointer{{Addr: addr, Pod: podB}}}); err != nil {
		t.Fatal(err)
	}
	els, err := ListElements(InNetNS(n.fd))
	if err != nil || len(els) != 2 || els[0].Chain != "np-pod-y/b-in" || els[1].Chain != "np-pod-y/b-eg" {
		t.Fatalf("after the owner changed: %+v (%v), want y/b's chains", els, err)
	}
	// And once more by a resync, back to the first pod.
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	if els, _ := ListElements(InNetNS(n.fd)); len(els) != 2 || els[0].Chain != "np-pod-x/a-in" {
		t.Fatalf("after a resync naming x/a: %+v", els)
	}
	// The plugin's element for an address stays with its pod.
	a := &Attachment{Pod: podA, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.8")}, Owner: "net/c1/eth0"}
	if err := addWithFallback(t, n, a); err != nil {
		t.Fatal(err)
	}
	if err := n.dp.Apply(Delta{Pointers: []Pointer{{Addr: a.Addrs[0], Pod: podB}}}); err != nil {
		t.Fatal(err)
	}
	for _, e := range mustElements(t, n) {
		if e.Addr == a.Addrs[0] && !strings.HasPrefix(e.Chain, "np-pod-x/a-") {
			t.Errorf("the plugin's element was repointed: %+v", e)
		}
	}
}

func mustElements(t *testing.T, n *nodeNS) []Element {
	t.Helper()
	els, err := ListElements(InNetNS(n.fd))
	if err != nil {
		t.Fatal(err)
	}
	return els
}

// TestAttachmentResolvesInOneBatch guards the ADD's cost for a pod pierd
// has not classified yet: once the base objects exist, the lookup before
// the batch points its addresses at np-unclassified, and the batch alone
// succeeds. Before, the batch led to the pod's missing chains and failed,
// and the plugin took the slow path, which it takes for a flushed table
// (restoring every attachment of the network: O(pods) per such ADD). A
// pod whose chains exist still gets them in the same single batch.
func TestAttachmentResolvesInOneBatch(t *testing.T) {
	n := newNodeNS(t)
	s := exampleState()
	s.Pointers = nil
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pod   Ref
		addr  string
		chain string
	}{
		{Ref{"z", "unknown"}, "10.244.1.20", ChainUnclassified},
		{podA, "10.244.1.21", "np-pod-x/a-in"},
	} {
		a := &Attachment{Pod: c.pod, Addrs: []netip.Addr{netip.MustParseAddr(c.addr)}, Owner: "net/" + c.addr + "/eth0"}
		conn, err := nftables.New(nftables.WithNetNSFd(n.fd), nftables.AsLasting())
		if err != nil {
			t.Fatal(err)
		}
		err = a.Resolve(conn)
		if err == nil {
			err = a.QueueAdds(conn)
		}
		if err == nil {
			err = conn.Flush()
		}
		_ = conn.CloseLasting()
		if err != nil {
			t.Fatalf("pod %s: the one batch failed: %v", c.pod, err)
		}
		els, err := ListElements(InNetNS(n.fd))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range els {
			if e.Addr.String() == c.addr && e.Dir == Ingress {
				found = e.Chain == c.chain
			}
		}
		if !found {
			t.Errorf("pod %s: elements %+v, want %s's ingress element leading to %s", c.pod, els, c.addr, c.chain)
		}
	}
}

// addWithFallback does what internal/nat does with an Attachment: Resolve,
// the fast batch, then on ENOENT or EEXIST Prepare, QueueSetup, QueueAdds.
func addWithFallback(t *testing.T, n *nodeNS, a *Attachment) error {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(n.fd), nftables.AsLasting())
	if err != nil {
		return err
	}
	defer conn.CloseLasting()
	if err := a.Resolve(conn); err != nil {
		return err
	}
	if err := a.QueueAdds(conn); err != nil {
		return err
	}
	err = conn.Flush()
	if !IsNotFound(err) && !isExist(err) {
		return err
	}
	if err := a.Prepare(conn); err != nil {
		return err
	}
	if err := a.QueueSetup(conn); err != nil {
		return err
	}
	if err := a.QueueAdds(conn); err != nil {
		return err
	}
	return conn.Flush()
}

// TestLargeChangesStayWithinBatchLimits guards against ENOBUFS: the kernel
// acknowledges every message of a batch, and a few hundred
// acknowledgements overflow the socket's receive buffer. A resync of
// hundreds of chains, a delta that rewrites the chains of every local pod
// (a policy of a busy namespace) and the removal of hundreds of elements
// (a GC) used to be one batch each and failed.
func TestLargeChangesStayWithinBatchLimits(t *testing.T) {
	n := newNodeNS(t)
	var s State
	var addrs []netip.Addr
	for i := range 300 {
		pol := Ref{Namespace: "big", Name: fmt.Sprintf("p%d", i)}
		pod := Ref{Namespace: "big", Name: fmt.Sprintf("pod%d", i)}
		s.Policies = append(s.Policies, PolicyChain{Policy: pol, Dir: Ingress, Rules: []Rule{{Ports: []Port{{Proto: TCP, First: 80, Last: 80}}}}})
		s.Pods = append(s.Pods, PodChain{Pod: pod, Dir: Ingress, Verdict: Isolated, Policies: []Ref{pol}}, PodChain{Pod: pod, Dir: Egress})
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 7, byte(i / 250), byte(1 + i%250)}))
		s.Pointers = append(s.Pointers, Pointer{Addr: addrs[i], Pod: pod})
	}
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatalf("resync of 300 policies and 300 pods: %v", err)
	}
	var d Delta
	for _, p := range s.Pods {
		if p.Dir == Ingress {
			p.Verdict, p.Policies = Open, nil
			d.Pods = append(d.Pods, p)
		}
	}
	if err := n.dp.Apply(d); err != nil {
		t.Fatalf("apply of 300 pod chains: %v", err)
	}
	if err := RemoveElements(addrs, InNetNS(n.fd)); err != nil {
		t.Fatalf("remove 600 elements: %v", err)
	}
	if els, err := ListElements(InNetNS(n.fd)); err != nil || len(els) != 0 {
		t.Errorf("elements left: %d (%v)", len(els), err)
	}
}
