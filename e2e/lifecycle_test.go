package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pier-cni/pier/internal/nodestate"
)

func dualStackConf(dataDir string) string {
	return fmt.Sprintf(`{ "cniVersion": "1.0.0", "name": "dual", "type": "pier",
  "bridge": "pier-dual", "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
  "ipam": { "type": "pier-ipam", "dataDir": %q,
            "ranges": [ [ { "subnet": "10.44.0.0/24" } ], [ { "subnet": "fd00:44::/64" } ] ] } }`, dataDir)
}

func TestDualStack(t *testing.T) {
	n := newNode(t)
	conf := dualStackConf(n.dataDir)
	c1, c2 := n.container("ds-1"), n.container("ds-2")
	n.mustAdd(c1, conf)
	n.mustAdd(c2, conf)

	eth0 := ipJSON[[]ipLink](t, c1.ns, "addr", "show", "dev", "eth0")[0]
	if !slices.Equal(eth0.addrs("inet"), []string{"10.44.0.2/24"}) || !slices.Equal(eth0.addrs("inet6"), []string{"fd00:44::2/64"}) {
		t.Fatalf("c1 addresses v4 %v v6 %v", eth0.addrs("inet"), eth0.addrs("inet6"))
	}
	if r := ipJSON[[]ipRoute](t, c1.ns, "route", "show", "default"); len(r) != 1 || r[0].Gateway != "10.44.0.1" {
		t.Fatalf("v4 default route %+v", r)
	}
	if r := ipJSON[[]ipRoute](t, c1.ns, "-6", "route", "show", "default"); len(r) != 1 || r[0].Gateway != "fd00:44::1" {
		t.Fatalf("v6 default route %+v", r)
	}
	c2.ns.MustRun(t, "ping", "-c1", "-W2", "10.44.0.2")
	c2.ns.MustRun(t, "ping", "-6", "-c1", "-W2", "fd00:44::2")
	c1.ns.MustRun(t, "ping", "-6", "-c1", "-W2", "fd00:44::1")
	if v6 := masqElements(t, n.sb.Node, "dual-masq6"); len(v6) != 2 {
		t.Fatalf("v6 masquerade set: %v", v6)
	}
	n.mustDel(c1, conf)
	n.mustDel(c2, conf)
	assertNothingLeft(t, n, conf, "pier-dual", "dual-masq6")
}

func TestDelIsIdempotent(t *testing.T) {
	n := newNode(t)
	conf := classicConf("1.0.0", n.dataDir)
	c := n.container("del-1")
	n.mustAdd(c, conf)
	n.mustDel(c, conf)
	assertNothingLeft(t, n, conf, "cni_bridge0", "mybridge-masq4")
	if br := ipJSON[[]ipLink](t, n.sb.Node, "link", "show", "dev", "cni_bridge0"); len(br) != 1 {
		t.Fatalf("DEL removed the bridge; it must stay for the next container")
	}
	n.mustDel(c, conf) // twice

	// The released address is handed out again (round robin comes back to it
	// once the rest of a tiny range is used).
	tiny := strings.Replace(conf, `"subnet": "10.15.20.0/24"`, `"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.2", "rangeEnd": "10.15.20.2"`, 1)
	again := n.container("del-2")
	out := n.mustAdd(again, tiny)
	if !strings.Contains(out, "10.15.20.2/24") {
		t.Fatalf("released address not handed out again: %s", out)
	}

	// DEL after the container namespace was deleted: the runtime still calls
	// DEL, with the old path or with none (containerd's second DEL).
	again.ns.Delete(t)
	n.mustDel(again, tiny)
	n.mustDel(attachment{id: again.id, ifName: "eth0"}, tiny)
	assertNothingLeft(t, n, tiny, "cni_bridge0", "mybridge-masq4")
}

func TestAddRollback(t *testing.T) {
	n := newNode(t)
	// One usable address: the second ADD exhausts the pool.
	conf := strings.Replace(classicConf("1.0.0", n.dataDir), `"subnet": "10.15.20.0/24"`,
		`"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.10", "rangeEnd": "10.15.20.10"`, 1)
	first := n.container("rb-1")
	n.mustAdd(first, conf)

	t.Run("pool exhausted", func(t *testing.T) {
		c := n.container("rb-2")
		msg := cniError(t, n.call("ADD", c, conf), 102)
		if !strings.Contains(msg, "10.15.20") {
			t.Errorf("message does not name the range: %q", msg)
		}
		assertOnlyFirst(t, n, conf, c)
	})
	t.Run("requested address taken", func(t *testing.T) {
		c := n.container("rb-3")
		wide := classicConf("1.0.0", n.dataDir)
		msg := cniError(t, n.call("ADD", c, wide, "CNI_ARGS=IP=10.15.20.10"), 101)
		if !strings.Contains(msg, "10.15.20.10") || !strings.Contains(msg, "rb-1") {
			t.Errorf("message does not name the address and its holder: %q", msg)
		}
		assertOnlyFirst(t, n, conf, c)
	})
	t.Run("interface exists in the container", func(t *testing.T) {
		c := n.container("rb-4")
		c.ns.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
		cniError(t, n.call("ADD", c, classicConf("1.0.0", n.dataDir)), 100)
		assertOnlyFirst(t, n, conf, attachment{})
		if links := ipJSON[[]ipLink](t, c.ns, "link", "show", "type", "veth"); len(links) != 2 {
			t.Errorf("container links changed by a failed ADD: %+v", links)
		}
	})
	t.Run("repeated ADD keeps the live attachment", func(t *testing.T) {
		cniError(t, n.call("ADD", first, conf), 100)
		assertOnlyFirst(t, n, conf, attachment{})
		first.ns.MustRun(t, "ping", "-c1", "-W2", "10.15.20.1")
	})
}

// assertOnlyFirst checks that a failed ADD left nothing: the node holds only
// the first container's veth, reservation and set element.
func assertOnlyFirst(t *testing.T, n *node, conf string, failed attachment) {
	t.Helper()
	if ports := bridgePorts(t, n.sb.Node, "cni_bridge0"); len(ports) != 1 {
		t.Errorf("bridge ports after a failed ADD: %+v", ports)
	}
	if res := reservations(t, conf); len(res) != 1 {
		t.Errorf("reservations after a failed ADD: %+v", res)
	}
	if elems := masqElements(t, n.sb.Node, "mybridge-masq4"); len(elems) != 1 {
		t.Errorf("masquerade elements after a failed ADD: %v", elems)
	}
	if failed.ns != nil {
		links := ipJSON[[]ipLink](t, failed.ns, "link", "show", "type", "veth")
		if len(links) != 0 {
			t.Errorf("veth left in the container: %+v", links)
		}
	}
}

func TestConcurrentAddDel(t *testing.T) {
	const count = 30
	n := newNode(t)
	conf := classicConf("1.0.0", n.dataDir)
	ctrs := make([]attachment, count)
	for i := range ctrs {
		ctrs[i] = n.container(fmt.Sprintf("par-%02d", i))
	}
	parallel(count, func(i int) {
		if r := n.call("ADD", ctrs[i], conf); r.ExitCode != 0 {
			t.Errorf("ADD %d: %s %s", i, r.Stdout, r.Stderr)
		}
	})
	if t.Failed() {
		return
	}
	seen := map[string]string{}
	for _, c := range ctrs {
		addrs := ipJSON[[]ipLink](t, c.ns, "addr", "show", "dev", "eth0")[0].addrs("inet")
		if len(addrs) != 1 {
			t.Fatalf("%s has addresses %v", c.id, addrs)
		}
		if other, dup := seen[addrs[0]]; dup {
			t.Fatalf("%s and %s both hold %s", other, c.id, addrs[0])
		}
		seen[addrs[0]] = c.id
	}
	parallel(count, func(i int) {
		if _, err := ctrs[i].ns.Run("ping", "-c1", "-W2", "10.15.20.1"); err != nil {
			t.Errorf("%s cannot reach the gateway: %v", ctrs[i].id, err)
		}
	})
	if n := len(masqElements(t, n.sb.Node, "mybridge-masq4")); n != count {
		t.Errorf("%d masquerade elements, want %d", n, count)
	}
	parallel(count, func(i int) {
		if r := n.call("DEL", ctrs[i], conf); r.ExitCode != 0 {
			t.Errorf("DEL %d: %s %s", i, r.Stdout, r.Stderr)
		}
	})
	assertNothingLeft(t, n, conf, "cni_bridge0", "mybridge-masq4")
}

func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); f(i) }()
	}
	wg.Wait()
}

// TestDelegatedHostLocal runs with Debian's reference host-local as the IPAM
// plugin, found through CNI_PATH as the spec's delegation section says.
// Pier's own state (attachment records) goes to the network's "stateDir",
// not to the host's /var/lib/cni/pier.
func TestDelegatedHostLocal(t *testing.T) {
	if _, err := os.Stat("/usr/lib/cni/host-local"); err != nil {
		t.Skip("needs Debian's containernetworking-plugins (/usr/lib/cni/host-local)")
	}
	n := newNode(t)
	stateDir := t.TempDir()
	conf := fmt.Sprintf(`{ "cniVersion": "1.0.0", "name": "delegated", "type": "pier",
  "bridge": "pier-del", "isGateway": true, "ipMasq": true, "stateDir": %q,
  "ipam": { "type": "host-local", "subnet": "10.45.0.0/24", "dataDir": %q } }`, stateDir, n.dataDir)
	c1, c2 := n.container("hl-1"), n.container("hl-2")
	out := n.mustAdd(c1, conf)
	n.mustAdd(c2, conf)
	if recs, errs := nodestate.Records(stateDir, "delegated"); len(recs) != 2 || len(errs) != 0 {
		t.Fatalf("records under stateDir after two ADDs: %d %v", len(recs), errs)
	}
	if _, err := os.Stat(n.dataDir + "/delegated/10.45.0.2"); err != nil {
		t.Fatalf("host-local did not record the reservation: %v", err)
	}
	c2.ns.MustRun(t, "ping", "-c1", "-W2", "10.45.0.2")
	if r := n.call("CHECK", c1, withPrevResult(conf, out)); r.ExitCode != 0 {
		t.Fatalf("CHECK through host-local: %s %s", r.Stdout, r.Stderr)
	}
	n.mustDel(c1, conf)
	n.mustDel(c2, conf)
	if _, err := os.Stat(n.dataDir + "/delegated/10.45.0.2"); !os.IsNotExist(err) {
		t.Fatalf("host-local reservation survived DEL: %v", err)
	}
	if elems := masqElements(t, n.sb.Node, "delegated-masq4"); len(elems) != 0 {
		t.Fatalf("masquerade elements left: %v", elems)
	}
	if recs, errs := nodestate.Records(stateDir, "delegated"); len(recs) != 0 || len(errs) != 0 {
		t.Fatalf("records left under stateDir: %d %v", len(recs), errs)
	}
}

// withPrevResult inserts an ADD result into a config as its prevResult, as a
// runtime does for CHECK and DEL.
func withPrevResult(conf, result string) string {
	return strings.Replace(conf, `"type": "pier",`, `"type": "pier", "prevResult": `+result+`,`, 1)
}

// TestRepeatedDelAfterReuse: a runtime may repeat a DEL (with the same
// prevResult) after the address has gone to another container; the repeated
// DEL must not take the new owner's masquerade element.
func TestRepeatedDelAfterReuse(t *testing.T) {
	n := newNode(t)
	conf := strings.Replace(classicConf("1.0.0", n.dataDir), `"subnet": "10.15.20.0/24"`,
		`"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.10", "rangeEnd": "10.15.20.10"`, 1)
	first, second := n.container("reuse-1"), n.container("reuse-2")
	delConf := withPrevResult(conf, n.mustAdd(first, conf))
	n.mustDel(first, delConf)
	if out := n.mustAdd(second, conf); !strings.Contains(out, "10.15.20.10") {
		t.Fatalf("the one address was not reused: %s", out)
	}
	n.mustDel(first, delConf)
	elems := masqElements(t, n.sb.Node, "mybridge-masq4")
	if len(elems) != 1 || !strings.Contains(elems[0], "reuse-2") {
		t.Fatalf("the repeated DEL of reuse-1 took reuse-2's masquerade element: %v", elems)
	}
	// DEL refuses the node's own namespace instead of deleting its eth0.
	n.sb.Node.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	cniError(t, n.call("DEL", attachment{ns: n.sb.Node, id: "reuse-3", ifName: "eth0"}, conf), 4)
	n.sb.Node.MustRun(t, "ip", "link", "show", "eth0")
}
