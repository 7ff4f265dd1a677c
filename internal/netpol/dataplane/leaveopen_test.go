package dataplane

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"
)

// TestRemoveElementsLeavesOpen: with LeaveOpen, RemoveElements removes
// the elements and hands its socket over unclosed (DEL closes it after
// the veth is gone), still usable.
func TestRemoveElementsLeavesOpen(t *testing.T) {
	n := newNodeNS(t)
	addr := netip.MustParseAddr("10.244.1.2")
	if err := addWithFallback(t, n, &Attachment{Pod: podA, Addrs: []netip.Addr{addr}, Owner: "net/c1/eth0"}); err != nil {
		t.Fatal(err)
	}
	var kept []*nftables.Conn
	if err := RemoveElements([]netip.Addr{addr}, InNetNS(n.fd), LeaveOpen(func(c *nftables.Conn) { kept = append(kept, c) })); err != nil {
		t.Fatal(err)
	}
	if len(kept) != 1 {
		t.Fatalf("%d sockets handed over, want 1", len(kept))
	}
	if _, err := kept[0].ListTables(); err != nil {
		t.Errorf("the socket handed over is not usable: %v", err)
	}
	if err := kept[0].CloseLasting(); err != nil {
		t.Error(err)
	}
	if els, err := ListElements(InNetNS(n.fd)); err != nil || len(els) != 0 {
		t.Errorf("elements left: %+v %v", els, err)
	}
}
