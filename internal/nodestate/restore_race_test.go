package nodestate

import (
	"net/netip"
	"testing"

	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestRestoreOneUsesTheLockedRecord guards restore against a record that
// changed between Restore's read and its lock. Restore reads every record
// of the network first, then restores them one by one, each under its
// record's lock; an attachment DELeted and ADDed again under the same
// owner meanwhile (a runtime retrying a sandbox under the same ID) has a
// new record at the same path, which the lock then opens, and what is
// restored must be that record, not the earlier content Restore read: the
// earlier one names an address the container no longer has (and that may
// be another container's by now), whose host port would then lead there.
func TestRestoreOneUsesTheLockedRecord(t *testing.T) {
	node := testnet.New(t).Node
	root := t.TempDir()
	old := testRecord("c1/eth0")
	old.Spoof, old.Firewall, old.Bridge = nil, false, ""
	if err := WriteRecord(root, old); err != nil {
		t.Fatal(err)
	}
	recs, errs := Records(root, "net1") // what Restore read first
	if len(recs) != 1 || len(errs) > 0 {
		t.Fatalf("records: %v %v", recs, errs)
	}
	// Meanwhile: DEL (elements and record gone), then ADD of the same
	// owner with another address.
	if err := RemoveRecord(root, "net1", "c1/eth0", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	now := old
	now.Masq = []netip.Addr{netip.MustParseAddr("10.1.0.3")}
	now.Ports = []Port{{Protocol: "tcp", HostPort: 8080, ContainerIP: netip.MustParseAddr("10.1.0.3"), ContainerPort: 80, Subnet: old.Ports[0].Subnet}}
	if err := WriteRecord(root, now); err != nil {
		t.Fatal(err)
	}
	var got nat.NodeElements
	if err := node.Do(func() error {
		if _, err := restoreOne(root, recs[0], false); err != nil {
			return err
		}
		var err error
		got, err = nat.ListNodeElements()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range got.Ports {
		if p.ContainerIP != netip.MustParseAddr("10.1.0.3") {
			t.Errorf("restore put back host port %d -> %s of the record it read before its DEL; the locked record maps it to 10.1.0.3",
				p.HostPort, p.ContainerIP)
		}
	}
}
