package dataplane

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
)

// TestMeasureAttachmentCost (PIER_MEASURE=1) times the kernel's part of
// an ADD's policy elements: the one batch that adds an address's two
// elements, committed on a kept socket (so the figure leaves out the
// process and the socket), in a table without policies and in one with
// 500 policy chains and 100 local pods. Adding an element that jumps to a
// chain makes the kernel validate the table's chain graph at commit, so
// the cost grows with the table; it is reported, not asserted.
func TestMeasureAttachmentCost(t *testing.T) {
	if os.Getenv("PIER_MEASURE") == "" {
		t.Skip("measurements: set PIER_MEASURE=1")
	}
	n := newNodeNS(t)
	if _, err := n.dp.Resync(State{}); err != nil {
		t.Fatal(err)
	}
	empty := n.attachmentCost(t, "empty")
	s := State{}
	sel := SelectorSetName("bench")
	s.Sets = append(s.Sets, SetMembers{SetSpec: SetSpec{Name: sel, Kind: Addresses}})
	for i := range 500 {
		pol := Ref{Namespace: "bench", Name: fmt.Sprintf("p%d", i)}
		s.Policies = append(s.Policies, PolicyChain{Policy: pol, Dir: Ingress, Rules: []Rule{
			{Peers: []Peer{{Set: sel}}, Ports: []Port{{Proto: TCP, First: 80, Last: 80}}}}})
		if i < 100 {
			pod := Ref{Namespace: "bench", Name: fmt.Sprintf("local%d", i)}
			s.Pods = append(s.Pods, PodChain{Pod: pod, Dir: Ingress, Verdict: Isolated, Policies: []Ref{pol}},
				PodChain{Pod: pod, Dir: Egress, Verdict: Open})
			s.Pointers = append(s.Pointers, Pointer{Addr: netip.AddrFrom4([4]byte{10, 8, 0, byte(i + 1)}), Pod: pod})
		}
	}
	if _, err := n.dp.Resync(s); err != nil {
		t.Fatal(err)
	}
	full := n.attachmentCost(t, "full")
	fmt.Printf("netpol measure: an ADD's policy elements commit in %s with no policy, %s with 500 policies and 100 local pods (median of 200)\n", empty, full)
	fmt.Printf("netpol measure: the lookup of the pod's chain before the batch (Resolve) takes %s, of a chain that does not exist %s (median of 200, 500 policies and 100 local pods)\n",
		n.resolveCost(t, Ref{Namespace: "bench", Name: "local7"}), n.resolveCost(t, Ref{Namespace: "bench", Name: "unknown"}))
}

func (n *nodeNS) resolveCost(t *testing.T, pod Ref) time.Duration {
	conn, err := nftables.New(nftables.WithNetNSFd(n.fd), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseLasting()
	var took []time.Duration
	for range 200 {
		a := &Attachment{Pod: pod, Addrs: []netip.Addr{netip.MustParseAddr("10.9.9.9")}}
		start := time.Now()
		if err := a.Resolve(conn); err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
		if a.Unclassified() != (pod.Name == "unknown") {
			t.Fatalf("Resolve of %s: unclassified=%v", pod, a.Unclassified())
		}
	}
	slices.Sort(took)
	return took[len(took)/2]
}

func (n *nodeNS) attachmentCost(t *testing.T, tag string) time.Duration {
	conn, err := nftables.New(nftables.WithNetNSFd(n.fd), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseLasting()
	pod := Ref{Namespace: "bench", Name: tag}
	if err := n.dp.Apply(Delta{Pods: []PodChain{{Pod: pod, Dir: Ingress}, {Pod: pod, Dir: Egress}}}); err != nil {
		t.Fatal(err)
	}
	var took []time.Duration
	var addrs []netip.Addr
	for i := range 200 {
		a := &Attachment{Pod: pod, Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 9, byte(i / 250), byte(1 + i%250)})}, Owner: "measure"}
		if err := a.QueueAdds(conn); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
		addrs = append(addrs, a.Addrs...)
	}
	if err := RemoveElements(addrs, InNetNS(n.fd)); err != nil {
		t.Fatal(err)
	}
	slices.Sort(took)
	return took[len(took)/2]
}
