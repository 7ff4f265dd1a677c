package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// withValidAttachments returns conf with cni.dev/valid-attachments, as a
// runtime sends it with GC.
func withValidAttachments(conf string, valid ...attachment) string {
	type att struct {
		ContainerID string `json:"containerID"`
		IfName      string `json:"ifname"`
	}
	list := []att{}
	for _, a := range valid {
		list = append(list, att{a.id, a.ifName})
	}
	b, _ := json.Marshal(list) // a slice of plain structs always marshals
	return strings.Replace(conf, `"type": "pier",`, `"type": "pier", "cni.dev/valid-attachments": `+string(b)+`,`, 1)
}

func otherNetConf(dataDir string) string {
	return fmt.Sprintf(`{ "cniVersion": "1.1.0", "name": "other", "type": "pier",
  "bridge": "pier-other", "isGateway": true, "ipMasq": true,
  "ipam": { "type": "pier-ipam", "subnet": "10.46.0.0/24", "dataDir": %q } }`, dataDir)
}

func TestGC(t *testing.T) {
	n := newNode(t)
	conf := classicConf("1.1.0", n.dataDir)
	other := otherNetConf(n.dataDir)
	c1, c2, c3 := n.container("gc-1"), n.container("gc-2"), n.container("gc-3")
	for _, c := range []attachment{c1, c2, c3} {
		n.mustAdd(c, conf)
	}
	bystander := n.container("gc-other")
	n.mustAdd(bystander, other)

	gc := func(valid ...attachment) {
		t.Helper()
		r := n.call("GC", attachment{}, withValidAttachments(conf, valid...))
		if r.ExitCode != 0 || r.Stdout != "" {
			t.Fatalf("GC: exit %d: %s %s", r.ExitCode, r.Stdout, r.Stderr)
		}
	}
	gc(c1)
	if res := reservations(t, conf); len(res) != 1 || res[0].Owner.ContainerID != "gc-1" {
		t.Fatalf("after GC keeping gc-1: reservations %+v", res)
	}
	if ports := bridgePorts(t, n.sb.Node, "cni_bridge0"); len(ports) != 1 || !strings.Contains(ports[0].IfAlias, ":gc-1:") {
		t.Fatalf("after GC keeping gc-1: bridge ports %+v", ports)
	}
	if elems := masqElements(t, n.sb.Node, "mybridge-masq4"); len(elems) != 1 || !strings.Contains(elems[0], "gc-1") {
		t.Fatalf("after GC keeping gc-1: masquerade %v", elems)
	}
	c1.ns.MustRun(t, "ping", "-c1", "-W2", "10.15.20.1")
	// The collected containers lost their interface with their host veth.
	if links := ipJSON[[]ipLink](t, c2.ns, "link", "show", "type", "veth"); len(links) != 0 {
		t.Fatalf("gc-2 still has %+v", links)
	}

	// An empty list means no attachment of this network is valid.
	gc()
	assertNothingLeft(t, n, conf, "cni_bridge0", "mybridge-masq4")

	// The other network was never touched.
	if res := reservations(t, other); len(res) != 1 {
		t.Fatalf("GC of mybridge touched network other: %+v", res)
	}
	if elems := masqElements(t, n.sb.Node, "other-masq4"); len(elems) != 1 {
		t.Fatalf("GC of mybridge touched other's masquerade: %v", elems)
	}
	bystander.ns.MustRun(t, "ping", "-c1", "-W2", "10.46.0.1")

	// DEL after GC still succeeds.
	n.mustDel(c2, conf)
}

func TestStatus(t *testing.T) {
	n := newNode(t)
	conf := strings.Replace(classicConf("1.1.0", n.dataDir), `"subnet": "10.15.20.0/24"`,
		`"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.10", "rangeEnd": "10.15.20.10"`, 1)
	if r := n.call("STATUS", attachment{}, conf); r.ExitCode != 0 {
		t.Fatalf("STATUS on an empty network: %s %s", r.Stdout, r.Stderr)
	}
	c := n.container("st-1")
	n.mustAdd(c, conf)
	msg := cniError(t, n.call("STATUS", attachment{}, conf), 50)
	if !strings.Contains(msg, "10.15.20.10") && !strings.Contains(strings.ToLower(msg), "exhaust") && !strings.Contains(msg, "free") {
		t.Errorf("STATUS message does not say the pool is full: %q", msg)
	}
	n.mustDel(c, conf)
	if r := n.call("STATUS", attachment{}, conf); r.ExitCode != 0 {
		t.Fatalf("STATUS after DEL: %s %s", r.Stdout, r.Stderr)
	}

	// A store that cannot be written: dataDir is a regular file.
	file := filepath.Join(n.dataDir, "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(conf, `"dataDir": "`+n.dataDir+`"`, `"dataDir": "`+file+`"`, 1)
	cniError(t, n.call("STATUS", attachment{}, broken), 50)

	// Old configs cannot ask for STATUS (spec: from 1.1.0 on).
	cniError(t, n.call("STATUS", attachment{}, strings.Replace(conf, `"1.1.0"`, `"1.0.0"`, 1)), 1)
}

// TestRebootReleasesEarlierReservations: no namespace survives a reboot, so
// the first IPAM operation after one releases what an earlier boot held.
// The reboot is simulated by rewriting the boot id recorded in the store.
func TestRebootReleasesEarlierReservations(t *testing.T) {
	n := newNode(t)
	conf := classicConf("1.0.0", n.dataDir)
	before := n.container("boot-1")
	n.mustAdd(before, conf)
	bootFile := filepath.Join(n.dataDir, "mybridge", "boot_id")
	if _, err := os.Stat(bootFile); err != nil {
		t.Fatalf("the store records no boot id: %v", err)
	}
	if err := os.WriteFile(bootFile, []byte("00000000-0000-0000-0000-000000000000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	after := n.container("boot-2")
	n.mustAdd(after, conf)
	res := reservations(t, conf)
	owners := []string{}
	for _, r := range res {
		owners = append(owners, r.Owner.ContainerID)
	}
	if !slices.Equal(owners, []string{"boot-2"}) {
		t.Fatalf("after a reboot, reservations are held by %v; want only boot-2", owners)
	}
}
