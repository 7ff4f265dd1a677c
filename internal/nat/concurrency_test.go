package nat

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestConcurrentAddDel runs 20 writers against one network of one node, as
// 20 plugin processes would: every call is its own netlink socket and batch.
// Half the writers run on threads switched into the node namespace, half
// through sockets opened in it. Meanwhile a reader lists the chain with nft
// over and over: since every setup flushes and re-adds a chain's rules in
// one transaction, no snapshot may ever show a chain with missing or
// duplicated rules.
func TestConcurrentAddDel(t *testing.T) {
	sb := testnet.New(t)
	fd := nodeFd(t, sb.Node)
	n := Network{Name: "busy", Subnets: prefixes("10.77.0.0/16", "2001:db8:77::/64")}
	const workers, rounds = 20, 10

	stop := make(chan struct{})
	var snapshots atomic.Int64
	watchDone := make(chan []string)
	go func() { watchDone <- watchRuleCounts(sb.Node, mustSpec(t, n), stop, &snapshots) }()

	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			work := func(opts ...Option) error { return churn(n, w, rounds, opts...) }
			if w%2 == 0 {
				errs[w] = work(InNetNS(fd))
			} else {
				errs[w] = sb.Node.Do(func() error { return work() })
			}
		})
	}
	wg.Wait()
	close(stop)
	if bad := <-watchDone; len(bad) > 0 {
		t.Errorf("reader saw %d bad snapshots, first: %s", len(bad), bad[0])
	}
	for w, err := range errs {
		if err != nil {
			t.Errorf("worker %d: %v", w, err)
		}
	}
	t.Logf("reader took %d snapshots during the churn", snapshots.Load())

	rs := listRuleset(t, sb.Node)
	wantNetwork(t, rs, n)
	got, err := ListMasq(n.Name, InNetNS(fd))
	if err != nil {
		t.Fatal(err)
	}
	// Each worker keeps its even rounds: one IPv4 and one IPv6 address each.
	if want := workers * rounds / 2 * 2; len(got) != want {
		t.Errorf("ListMasq holds %d elements, want %d", len(got), want)
	}
	for _, e := range got {
		w, i := churnIndex(e.Addr)
		if i%2 != 0 || e.Owner != churnOwner(w, i) {
			t.Errorf("element %s owner %q: should be gone or owned by %q", e.Addr, e.Owner, churnOwner(w, i))
		}
	}
}

// churn adds rounds pairs of addresses for worker w and deletes the odd ones.
func churn(n Network, w, rounds int, opts ...Option) error {
	for i := range rounds {
		a := churnAddrs(w, i)
		if err := AddMasq(n, a, churnOwner(w, i), opts...); err != nil {
			return fmt.Errorf("add %v: %w", a, err)
		}
		if i%2 == 1 {
			if err := DelMasq(n, a, opts...); err != nil {
				return fmt.Errorf("del %v: %w", a, err)
			}
		}
	}
	return nil
}

func churnAddrs(w, i int) []netip.Addr {
	return addrs(fmt.Sprintf("10.77.%d.%d", w, i+1), fmt.Sprintf("2001:db8:77::%x:%x", w, i+1))
}

func churnOwner(w, i int) string { return fmt.Sprintf("ctr-%d-%d/eth0", w, i) }

// churnIndex recovers worker and round from an address made by churnAddrs.
func churnIndex(a netip.Addr) (w, i int) {
	b := a.AsSlice()
	if a.Is4() {
		return int(b[2]), int(b[3]) - 1
	}
	return int(b[12])<<8 | int(b[13]), (int(b[14])<<8 | int(b[15])) - 1
}

// watchRuleCounts lists the table in node until stop and returns a
// description of every snapshot in which a chain of s existed with other
// than its own number of rules.
func watchRuleCounts(node *testnet.NS, s spec, stop <-chan struct{}, count *atomic.Int64) []string {
	var bad []string
	want := map[string]int{s.chain: len(s.baseRules()), s.gen: len(s.genRules())}
	for {
		select {
		case <-stop:
			return bad
		default:
		}
		out, err := node.Run("nft", "-j", "list", "table", "inet", TableName)
		if err != nil {
			// The table does not exist until the first batch commits.
			time.Sleep(time.Millisecond)
			continue
		}
		rs, err := parseRuleset(out)
		if err != nil {
			bad = append(bad, fmt.Sprintf("unparsable: %v", err))
			continue
		}
		count.Add(1)
		for chain, n := range want {
			if _, ok := rs.Chains[chain]; ok && len(rs.rulesIn(chain)) != n {
				bad = append(bad, fmt.Sprintf("chain %s: %d rules, want %d: %s", chain, len(rs.rulesIn(chain)), n, out))
			}
		}
	}
}
