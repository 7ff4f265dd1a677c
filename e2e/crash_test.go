package e2e

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/testnet"
)

// crashIterations is how many ADDs TestCrashSafety kills; each iteration
// creates and deletes one container namespace.
const crashIterations = 400

// TestCrashSafety: a pier process killed with SIGKILL at any moment of ADD
// or DEL leaves only state that the runtime's follow-up DEL or a GC cleans
// completely, and the store is never corrupt.
//
// Each iteration starts an ADD directly in the node namespace (testnet
// Start, so the kill lands in the plugin and not in `ip netns exec`) and
// kills it after a delay drawn uniformly from [0, median ADD time], so the
// kills spread over every step of ADD. One iteration in four also kills a
// DEL. Then a complete DEL runs, as a runtime always follows an aborted ADD
// with one, and must leave nothing of the attachment. Three live containers
// stand beside the whole time and must keep their addresses and their
// connectivity, and a final GC must leave exactly them.
func TestCrashSafety(t *testing.T) {
	began := time.Now()
	n := newNode(t)
	conf := classicConf("1.1.0", n.dataDir)

	live := make([]attachment, 3)
	for i := range live {
		live[i] = n.container(fmt.Sprintf("live-%d", i))
		n.mustAdd(live[i], conf)
	}
	liveAddrs := crashLiveAddrs(t, live)
	liveVeths := crashVeths(t, n.sb.Node)
	if len(liveVeths) != len(live) {
		t.Fatalf("node veths after 3 ADDs: %v", liveVeths)
	}

	run := &crashRun{t: t, n: n, conf: conf, liveAddrs: liveAddrs, liveVeths: liveVeths}
	run.maxAdd, run.maxDel = crashCalibrate(t, n, conf)
	t.Logf("median ADD %v, median DEL %v (Start to Wait, no ip netns exec)", run.maxAdd, run.maxDel)

	st := &run.stats
	for i := range crashIterations {
		run.iteration(i)
		if t.Failed() && st.failures > 5 {
			t.Fatalf("stopping after %d failed iterations", st.failures)
		}
	}
	t.Logf("%d iterations: %d ADDs killed before completing, %d had already finished; "+
		"killed ADDs left: a host veth %d, a reservation %d, an address on eth0 %d, a masquerade element %d; "+
		"%d DELs killed; allocations wrapped round the range %d times; leaks after DEL: %d (of which temp files: %d)",
		crashIterations, st.killed, st.finished, st.leftVeth, st.leftResv, st.leftAddr, st.leftMasq,
		st.delKilled, st.wraps, st.leaks, st.temps)
	if st.leaks > 0 {
		t.Errorf("%d iterations left state their DEL did not clean", st.leaks)
	}

	gc := withValidAttachments(conf, live...)
	if r := n.call("GC", attachment{}, gc); r.ExitCode != 0 || r.Stdout != "" {
		t.Fatalf("GC: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	run.assertOnlyLive(live)
	if got := crashLiveAddrs(t, live); !maps.Equal(got, liveAddrs) {
		t.Errorf("live addresses changed: %v, were %v", got, liveAddrs)
	}
	for _, c := range live {
		if out, err := c.ns.Run("ping", "-c1", "-W2", "10.15.20.1"); err != nil {
			t.Errorf("%s cannot reach the gateway: %v\n%s", c.id, err, out)
		}
	}
	t.Logf("TestCrashSafety took %v", time.Since(began).Round(time.Millisecond))
}

// crashStats counts what the iterations saw.
type crashStats struct {
	killed, finished                       int // ADDs killed mid-run, ADDs done before the kill
	leftVeth, leftResv, leftAddr, leftMasq int // what killed ADDs left behind
	delKilled, leaks, temps, failures      int
	wraps                                  int        // allocations below the previous one
	last                                   netip.Addr // the previous allocation
}

// count records what one killed ADD left behind.
func (st *crashStats) count(held, addrs []netip.Addr, veth, masq bool) {
	for _, left := range []struct {
		n  *int
		is bool
	}{{&st.leftVeth, veth}, {&st.leftResv, len(held) > 0}, {&st.leftAddr, len(addrs) > 0}, {&st.leftMasq, masq}} {
		if left.is {
			*left.n++
		}
	}
}

// crashRun is TestCrashSafety's fixed context: the node, the config, the
// live containers' state (which must never change) and the bounds of the
// random kill delays.
type crashRun struct {
	t              *testing.T
	n              *node
	conf           string
	liveAddrs      map[string]netip.Addr // container ID → its address
	liveVeths      []string              // sorted host veth names
	maxAdd, maxDel time.Duration         // kill delays are uniform in [0, max]
	stats          crashStats
}

// iteration kills one ADD (and, one time in four, one DEL) of a new
// container, checks what the kill left, runs the runtime's DEL and checks
// that nothing of the container remains.
func (run *crashRun) iteration(i int) {
	t, n, conf, st := run.t, run.n, run.conf, &run.stats
	failedBefore := t.Failed()
	defer func() {
		if t.Failed() && !failedBefore {
			st.failures++
		}
	}()
	c := n.container(fmt.Sprintf("crash-%03d", i))
	defer c.ns.Delete(t)

	r, done := crashKillAfter(t, n, "ADD", c, conf, randDelay(run.maxAdd))
	switch {
	case done && r.ExitCode != 0:
		t.Errorf("iteration %d: ADD failed on its own: exit %d\nstdout: %s\nstderr: %s", i, r.ExitCode, r.Stdout, r.Stderr)
	case done:
		st.finished++
	default:
		st.killed++
	}

	// What the interrupted ADD left: never a corrupt store, never an address
	// in use without its reservation, never a live container's address.
	held := crashHeldBy(t, conf, run.liveAddrs, c.id, i)
	addrs := crashEth0Addrs(t, c.ns)
	for _, a := range addrs {
		for id, la := range run.liveAddrs {
			if a == la {
				t.Errorf("iteration %d: killed ADD put %s, live %s's address, on eth0", i, a, id)
			}
		}
		if !slices.Contains(held, a) {
			t.Errorf("iteration %d: eth0 holds %s, which the store does not reserve for %s (it reserves %v)", i, a, c.id, held)
		}
	}
	if len(held) > 0 {
		if st.last.IsValid() && held[0].Less(st.last) {
			st.wraps++ // round robin went past the range's end and on among the live addresses
		}
		st.last = held[0]
	}
	if !done {
		st.count(held, addrs, len(crashVeths(t, n.sb.Node)) > len(run.liveVeths),
			slices.ContainsFunc(masqElements(t, n.sb.Node, "mybridge-masq4"), func(e string) bool { return strings.Contains(e, c.id+"/eth0") }))
	}

	if i%4 == 3 {
		r, done := crashKillAfter(t, n, "DEL", c, conf, randDelay(run.maxDel))
		switch {
		case done && r.ExitCode != 0:
			t.Errorf("iteration %d: DEL failed on its own: exit %d\nstdout: %s\nstderr: %s", i, r.ExitCode, r.Stdout, r.Stderr)
		case !done:
			st.delKilled++
		}
	}
	if r := n.call("DEL", c, conf); r.ExitCode != 0 || r.Stdout != "" {
		t.Errorf("iteration %d: DEL after the kill: exit %d\nstdout: %s\nstderr: %s", i, r.ExitCode, r.Stdout, r.Stderr)
		return
	}
	if leak := run.leftovers(c); leak != "" {
		st.leaks++
		t.Errorf("iteration %d: DEL left %s", i, leak)
	}
	// A killed ADD's temporary owner index is the follow-up DEL's to remove.
	if temps := crashTempFiles(t, n.dataDir); len(temps) > 0 {
		st.leaks++
		st.temps += len(temps)
		t.Errorf("iteration %d: DEL left temp files %v", i, temps)
	}
}

// crashKillAfter starts a CNI call in the node namespace, SIGKILLs it after
// delay and reaps it. done reports that it had exited by itself first.
func crashKillAfter(t *testing.T, n *node, verb string, a attachment, conf string, delay time.Duration) (r testnet.PluginRun, done bool) {
	t.Helper()
	cmd, err := n.sb.Start(filepath.Join(n.binDir, "pier"), crashEnv(n, verb, a), []byte(conf))
	if err != nil {
		t.Fatalf("start %s: %v", verb, err)
	}
	if delay > 0 {
		// time.Sleep rounds sub-millisecond waits up to about 1 ms here;
		// nanosleep(2) keeps the delays spread over the whole run.
		ts := unix.NsecToTimespec(delay.Nanoseconds())
		_ = unix.Nanosleep(&ts, nil) // EINTR only shortens a random delay
	}
	// Our own child, not yet reaped: Kill cannot hit another process. A
	// child that already exited is a zombie, which ignores the signal.
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("kill %s: %v", verb, err)
	}
	werr := cmd.Wait()
	return testnet.Outcome(cmd, werr), cmd.ProcessState.Exited()
}

// crashStartWait runs a CNI call through testnet Start and returns its
// outcome and wall time, which is what the kill delays are drawn against.
func crashStartWait(t *testing.T, n *node, verb string, a attachment, conf string) (testnet.PluginRun, time.Duration) {
	t.Helper()
	t0 := time.Now()
	cmd, err := n.sb.Start(filepath.Join(n.binDir, "pier"), crashEnv(n, verb, a), []byte(conf))
	if err != nil {
		t.Fatalf("start %s: %v", verb, err)
	}
	r := testnet.Outcome(cmd, cmd.Wait())
	return r, time.Since(t0)
}

func crashEnv(n *node, verb string, a attachment) []string {
	netns := ""
	if a.ns != nil {
		netns = a.ns.Path
	}
	return []string{
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + a.id, "CNI_NETNS=" + netns,
		"CNI_IFNAME=" + a.ifName, "CNI_PATH=" + n.cniPath,
	}
}

// crashCalibrate measures the median ADD and DEL of a scratch container.
func crashCalibrate(t *testing.T, n *node, conf string) (add, del time.Duration) {
	t.Helper()
	const pairs = 7
	c := n.container("calibrate")
	defer c.ns.Delete(t)
	// A requested address becomes the round-robin hint: move it near the
	// end of the range, so the killed ADDs' allocations also wrap round and
	// go on past the live containers' addresses.
	a := attachment{ns: c.ns, id: "calibrate-hint", ifName: "eth0"}
	n.mustAdd(a, conf, "CNI_ARGS=IP=10.15.20.200")
	n.mustDel(a, conf)
	var adds, dels []time.Duration
	for i := range pairs {
		a := attachment{ns: c.ns, id: fmt.Sprintf("calibrate-%d", i), ifName: "eth0"}
		r, d := crashStartWait(t, n, "ADD", a, conf)
		if r.ExitCode != 0 {
			t.Fatalf("calibration ADD: exit %d\n%s\n%s", r.ExitCode, r.Stdout, r.Stderr)
		}
		adds = append(adds, d)
		r, d = crashStartWait(t, n, "DEL", a, conf)
		if r.ExitCode != 0 {
			t.Fatalf("calibration DEL: exit %d\n%s\n%s", r.ExitCode, r.Stdout, r.Stderr)
		}
		dels = append(dels, d)
	}
	slices.Sort(adds)
	slices.Sort(dels)
	return adds[pairs/2], dels[pairs/2]
}

func randDelay(upTo time.Duration) time.Duration {
	return time.Duration(rand.Int64N(int64(upTo) + 1))
}

// crashHeldBy checks the store after a kill — every record readable, owned
// by a live container (at its address) or by the killed one — and returns
// what the killed one holds.
func crashHeldBy(t *testing.T, conf string, liveAddrs map[string]netip.Addr, id string, i int) []netip.Addr {
	t.Helper()
	var held []netip.Addr
	for _, r := range reservations(t, conf) {
		switch {
		case r.Problem != "":
			t.Errorf("iteration %d: corrupt record %s: %s", i, r.Addr, r.Problem)
		case r.Owner.ContainerID == id && r.Owner.IfName == "eth0":
			held = append(held, r.Addr)
		case liveAddrs[r.Owner.ContainerID] == r.Addr && r.Owner.IfName == "eth0":
		default:
			t.Errorf("iteration %d: unexpected reservation %s held by %s", i, r.Addr, r.Owner)
		}
	}
	return held
}

// leftovers describes what of the attachment c survived its DEL, or
// returns "" when nothing did: only the live containers' reservations,
// veths and masquerade elements remain, c's owner index is gone and c has
// no eth0. Temp files are GC's to sweep and not counted here.
func (run *crashRun) leftovers(c attachment) string {
	t, n, liveAddrs, liveVeths := run.t, run.n, run.liveAddrs, run.liveVeths
	t.Helper()
	var left []string
	if got := reservationMap(t, run.conf); !maps.Equal(got, liveAddrs) {
		left = append(left, fmt.Sprintf("reservations %v", got))
	}
	if _, err := os.Stat(filepath.Join(n.dataDir, "mybridge", "owners", c.id+"@eth0")); !errors.Is(err, os.ErrNotExist) {
		left = append(left, fmt.Sprintf("owner index of %s (stat: %v)", c.id, err))
	}
	if v := crashVeths(t, n.sb.Node); !slices.Equal(v, liveVeths) {
		left = append(left, fmt.Sprintf("node veths %v", v))
	}
	if e := masqAddrs(t, n.sb.Node, "mybridge-masq4"); !slices.Equal(e, sortedAddrs(liveAddrs)) {
		left = append(left, fmt.Sprintf("masquerade elements %v", e))
	}
	if links := crashLinks(t, c.ns); len(links) > 1 { // lo only
		left = append(left, fmt.Sprintf("container links %v", links))
	}
	return strings.Join(left, "; ")
}

// assertOnlyLive checks the end state after GC: store, bridge, node
// veths and masquerade map hold exactly the live containers.
func (run *crashRun) assertOnlyLive(live []attachment) {
	t, n, conf, liveAddrs, liveVeths := run.t, run.n, run.conf, run.liveAddrs, run.liveVeths
	t.Helper()
	for _, r := range reservations(t, conf) {
		if r.Problem != "" {
			t.Errorf("after GC: unreadable record %s: %s", r.Addr, r.Problem)
		}
	}
	if got := reservationMap(t, conf); !maps.Equal(got, liveAddrs) {
		t.Errorf("after GC: reservations %v, want %v", got, liveAddrs)
	}
	var ports []string
	for _, p := range bridgePorts(t, n.sb.Node, "cni_bridge0") {
		ports = append(ports, p.IfName)
	}
	slices.Sort(ports)
	if !slices.Equal(ports, liveVeths) {
		t.Errorf("after GC: bridge ports %v, want %v", ports, liveVeths)
	}
	if v := crashVeths(t, n.sb.Node); !slices.Equal(v, liveVeths) {
		t.Errorf("after GC: node veths %v, want %v", v, liveVeths)
	}
	if e := masqAddrs(t, n.sb.Node, "mybridge-masq4"); !slices.Equal(e, sortedAddrs(liveAddrs)) {
		t.Errorf("after GC: masquerade elements %v, want %v", e, sortedAddrs(liveAddrs))
	}
	crashAssertStoreFiles(t, filepath.Join(n.dataDir, "mybridge"), live, liveAddrs)
}

// crashAssertStoreFiles checks the store directory (internal/ipam/store's
// file.go layout): only lock, boot_id, round-robin hints, one record per
// live address and owners/ with exactly the live owners' indexes; each
// record is a link to the index of its owner, which lists it; no temp file.
func crashAssertStoreFiles(t *testing.T, dir string, live []attachment, liveAddrs map[string]netip.Addr) {
	t.Helper()
	if temps := crashTempFiles(t, filepath.Dir(dir)); len(temps) > 0 {
		t.Errorf("after GC: temp files left: %v", temps)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	owners := map[netip.Addr]string{}
	for id, a := range liveAddrs {
		owners[a] = id
	}
	records := 0
	for _, e := range entries {
		name := e.Name()
		addr, perr := netip.ParseAddr(name)
		switch {
		case name == "lock" || name == "boot_id" || strings.HasPrefix(name, "last_reserved.") || name == "owners" && e.IsDir():
		case name == "attachments" && e.IsDir():
			crashAssertAttachmentRecords(t, filepath.Join(dir, name), liveAddrs)
		case perr == nil:
			records++
			id, ok := owners[addr]
			if !ok {
				t.Errorf("after GC: record %s belongs to no live container", name)
				continue
			}
			crashAssertRecord(t, dir, addr, id)
		default:
			t.Errorf("after GC: unexpected file %s in the store", name)
		}
	}
	if records != len(live) {
		t.Errorf("after GC: %d address records, want %d", records, len(live))
	}
	idx, err := os.ReadDir(filepath.Join(dir, "owners"))
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, e := range idx {
		got = append(got, e.Name())
	}
	for _, c := range live {
		want = append(want, c.id+"@eth0")
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("after GC: owner indexes %v, want %v", got, want)
	}
}

// crashAssertRecord checks that the record of addr is a hard link to id's
// owner index and that the index lists addr.
func crashAssertRecord(t *testing.T, dir string, addr netip.Addr, id string) {
	t.Helper()
	index := filepath.Join(dir, "owners", id+"@eth0")
	ri, err := os.Stat(filepath.Join(dir, addr.String()))
	if err != nil {
		t.Errorf("record %s: %v", addr, err)
		return
	}
	ii, err := os.Stat(index)
	if err != nil {
		t.Errorf("record %s: its owner's index: %v", addr, err)
		return
	}
	if !os.SameFile(ri, ii) {
		t.Errorf("record %s is not a link to the index of %s", addr, id)
	}
	b, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if lines[0] != id+"@eth0" || !slices.Contains(lines[1:], addr.String()) {
		t.Errorf("index of %s does not name it and list %s:\n%s", id, addr, b)
	}
}

// crashTempFiles lists the store's temp files (".<name>.tmp") under dataDir.
func crashTempFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	var temps []string
	for _, f := range storeFiles(t, dataDir) {
		if base := filepath.Base(f); strings.HasPrefix(base, ".") && strings.HasSuffix(base, ".tmp") {
			temps = append(temps, f)
		}
	}
	return temps
}

// crashLiveAddrs reads each live container's IPv4 address from its eth0.
func crashLiveAddrs(t *testing.T, live []attachment) map[string]netip.Addr {
	t.Helper()
	m := map[string]netip.Addr{}
	for _, c := range live {
		addrs := crashEth0Addrs(t, c.ns)
		if len(addrs) != 1 {
			t.Fatalf("%s: eth0 addresses %v, want one", c.id, addrs)
		}
		m[c.id] = addrs[0]
	}
	return m
}

// crashEth0Addrs returns the global IPv4 addresses of eth0 in ns, none when
// there is no eth0.
func crashEth0Addrs(t *testing.T, ns *testnet.NS) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	err := ns.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				out = append(out, ip)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read eth0 in %s: %v", ns.Name, err)
	}
	return out
}

// crashVeths returns the sorted names of the veths in ns.
func crashVeths(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	var names []string
	for _, l := range crashLinkList(t, ns) {
		if l.Type() == "veth" {
			names = append(names, l.Attrs().Name)
		}
	}
	slices.Sort(names)
	return names
}

// crashLinks returns the names of every link in ns.
func crashLinks(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	var names []string
	for _, l := range crashLinkList(t, ns) {
		names = append(names, l.Attrs().Name)
	}
	return names
}

func crashLinkList(t *testing.T, ns *testnet.NS) []netlink.Link {
	t.Helper()
	var links []netlink.Link
	err := ns.Do(func() error {
		var err error
		links, err = netlink.LinkList()
		return err
	})
	if err != nil {
		t.Fatalf("list links in %s: %v", ns.Name, err)
	}
	return links
}

// reservationMap returns the store's reservations as container ID →
// address (interface eth0 only; anything else is keyed by its owner).
func reservationMap(t *testing.T, conf string) map[string]netip.Addr {
	t.Helper()
	m := map[string]netip.Addr{}
	for _, r := range reservations(t, conf) {
		key := r.Owner.ContainerID
		if r.Owner.IfName != "eth0" || r.Problem != "" {
			key = fmt.Sprintf("%s/%s(%s)", r.Owner.ContainerID, r.Owner.IfName, r.Problem)
		}
		if _, dup := m[key]; dup {
			key += "+" + r.Addr.String()
		}
		m[key] = r.Addr
	}
	return m
}

// masqAddrs returns the sorted addresses of a masquerade map's elements.
func masqAddrs(t *testing.T, ns *testnet.NS, set string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, e := range masqElements(t, ns, set) {
		field, _, _ := strings.Cut(e, " ")
		a, err := netip.ParseAddr(field)
		if err != nil {
			t.Fatalf("masquerade element %q: %v", e, err)
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func sortedAddrs(m map[string]netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for _, a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// crashAssertAttachmentRecords checks that the nftables records left are
// the live containers', one each.
func crashAssertAttachmentRecords(t *testing.T, dir string, live map[string]netip.Addr) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), "@eth0")
		if _, live := live[id]; !ok || !live {
			t.Errorf("after GC: attachment record %s belongs to no live container", e.Name())
		}
	}
	if len(entries) != len(live) {
		t.Errorf("after GC: %d attachment records for %d live containers", len(entries), len(live))
	}
}
