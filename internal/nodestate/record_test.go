package nodestate

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

func testRecord(owner string) Record {
	return Record{Boot: "b", Network: "net1", Subnets: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, Bridge: "br0",
		Owner: owner, HostVeth: "veth0123456789a", Masq: []netip.Addr{netip.MustParseAddr("10.1.0.2")},
		Ports:    []Port{{Protocol: "tcp", HostPort: 8080, ContainerIP: netip.MustParseAddr("10.1.0.2"), ContainerPort: 80, Subnet: netip.MustParsePrefix("10.1.0.0/24")}},
		Spoof:    &Spoof{Port: "veth0123456789a", MAC: "02:00:00:00:00:01"},
		Firewall: true}
}

// TestRecords: a record reads back as written, names its attachment's
// elements, goes with RemoveRecord (its temp file too) after the undo ran,
// stays when the undo fails, and owners that cannot name a file are
// refused.
func TestRecords(t *testing.T) {
	root := t.TempDir()
	r := testRecord("c1/eth0")
	if err := WriteRecord(root, r); err != nil {
		t.Fatal(err)
	}
	recs, errs := Records(root, "net1")
	if len(errs) > 0 || len(recs) != 1 || recs[0].Owner != "c1/eth0" || recs[0].Ports[0].HostPort != 8080 || recs[0].Spoof.MAC != r.Spoof.MAC {
		t.Fatalf("Records: %+v %v", recs, errs)
	}
	a, err := recs[0].Attachment(7)
	if err != nil || a.Spoof.MAC.String() != "02:00:00:00:00:01" || a.Ports[0].ContainerPort != 80 || a.Bridge != "br0" || a.GuardGroup != 7 {
		t.Fatalf("Attachment: %+v %v", a, err)
	}
	st, err := os.Stat(filepath.Join(Dir(root, "net1"), "c1@eth0"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("record file: %v %v", st, err)
	}
	if nets, err := Networks(root); err != nil || len(nets) != 1 || nets[0] != "net1" {
		t.Fatalf("Networks: %v %v", nets, err)
	}
	if err := RemoveRecord(root, "net1", "c1/eth0", func() error { return fmt.Errorf("nftables busy") }); err == nil {
		t.Fatal("RemoveRecord ignored the undo's error")
	}
	if recs, _ := Records(root, "net1"); len(recs) != 1 {
		t.Fatal("the record went although its undo failed")
	}
	tmp := filepath.Join(Dir(root, "net1"), ".c1@eth0.tmp")
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ran := false
	if err := RemoveRecord(root, "net1", "c1/eth0", func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("RemoveRecord: %v (undo ran: %v)", err, ran)
	}
	if entries, _ := os.ReadDir(Dir(root, "net1")); len(entries) != 0 {
		t.Errorf("left after RemoveRecord: %v", entries)
	}
	for _, bad := range []string{"c1", "/eth0", "c1/", "a@b/eth0", "../x/eth0", ".c/eth0"} {
		if err := WriteRecord(root, testRecord(bad)); err == nil {
			t.Errorf("owner %q was accepted", bad)
		}
	}
}

// TestSweepTemp: GC's sweep takes the temp files of attachments no longer
// valid and keeps the others'.
func TestSweepTemp(t *testing.T) {
	root := t.TempDir()
	dir := Dir(root, "net1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{".live@eth0.tmp", ".dead@eth0.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := SweepTemp(root, "net1", func(o string) bool { return o == "live/eth0" }); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != ".live@eth0.tmp" {
		t.Errorf("after the sweep: %v", entries)
	}
}

// BenchmarkWriteRecord is what recording an attachment costs its ADD: one
// file created and renamed into place (the figure in the package notes).
func BenchmarkWriteRecord(b *testing.B) {
	root := b.TempDir()
	for i := 0; b.Loop(); i++ {
		if err := WriteRecord(root, testRecord(fmt.Sprintf("c%d/eth0", i))); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRecordPolicyElements: a record of a network policy attachment gives
// back its policy elements for a restore, leading to its pod's chains (or
// to np-unclassified without a pod): a restore that left them out would
// let the pod's traffic escape its policies until pierd noticed.
func TestRecordPolicyElements(t *testing.T) {
	r := testRecord("c1/eth0")
	r.PolicyAddrs = []netip.Addr{netip.MustParseAddr("10.1.0.2")}
	r.Pod = "team-a/web-0"
	root := t.TempDir()
	if err := WriteRecord(root, r); err != nil {
		t.Fatal(err)
	}
	recs, _ := Records(root, "net1")
	a, err := recs[0].Attachment(7)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := a.Extra.(*dataplane.Attachment)
	if !ok || p.Pod.String() != "team-a/web-0" || len(p.Addrs) != 1 || p.Owner != nat.NodeOwner("net1", "c1/eth0") {
		t.Fatalf("policy part %+v (%T)", a.Extra, a.Extra)
	}
	if a, _ := testRecord("c2/eth0").Attachment(7); a.Extra != nil {
		t.Errorf("a record without policy addresses restores policy elements: %+v", a.Extra)
	}
}
