package ipam

// Tests of the allocator over the real file store: concurrency across
// goroutines and processes, crashes (SIGKILL at arbitrary points), reboots.
// Child processes are this test binary re-executed in helper mode (TestMain).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// Helper mode: PIER_IPAM_HELPER=<verb>, PIER_IPAM_STDIN=<network config>,
// PIER_IPAM_PREFIX=<container id prefix>, PIER_IPAM_N=<count>.
const helperEnv = "PIER_IPAM_HELPER"

func TestMain(m *testing.M) {
	if verb := os.Getenv(helperEnv); verb != "" {
		os.Exit(runHelper(verb))
	}
	os.Exit(m.Run())
}

// runHelper is a child process: "add" reserves N owners and prints one
// address per line, "del" releases them, "churn" adds and deletes until
// killed.
func runHelper(verb string) int {
	conf, err := config.LoadIPAM([]byte(os.Getenv("PIER_IPAM_STDIN")), "")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	prefix := os.Getenv("PIER_IPAM_PREFIX")
	n, _ := strconv.Atoi(os.Getenv("PIER_IPAM_N")) // zero on garbage: the parent's test then fails
	ctx := context.Background()
	for i := 0; verb == "churn" || i < n; i++ {
		o := own(fmt.Sprintf("%s-%d", prefix, i%max(n, 1)))
		switch {
		case verb == "del" || verb == "churn" && i%3 == 2:
			err = localDel(ctx, conf, o)
		default:
			var res *current.Result
			if res, err = localAdd(ctx, conf, o); err == nil && verb == "add" {
				fmt.Println(res.IPs[0].Address.String())
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

func fileConf(t testing.TB, subnet string) (*config.IPAMConfig, string) {
	t.Helper()
	stdin := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"filenet","ipam":{"type":"pier-ipam","subnet":%q,"dataDir":%q}}`,
		subnet, t.TempDir())
	conf, err := config.LoadIPAM([]byte(stdin), "")
	if err != nil {
		t.Fatal(err)
	}
	return conf, stdin
}

func helperCmd(verb, stdin, prefix string, n int) *exec.Cmd {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+verb, "PIER_IPAM_STDIN="+stdin,
		"PIER_IPAM_PREFIX="+prefix, "PIER_IPAM_N="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	return cmd
}

// assertEmpty fails unless the network holds no record and no index
// (temp files of interrupted writes are GC's to sweep).
func assertEmpty(t *testing.T, conf *config.IPAMConfig) {
	t.Helper()
	list, err := local(conf).List(context.Background(), conf)
	if err != nil || len(list) != 0 {
		t.Errorf("store not empty: %+v, %v", list, err)
	}
	if owners := indexOwners(t, conf); len(owners) != 0 {
		t.Errorf("owner indexes left: %v", owners)
	}
}

func TestFileConcurrentGoroutines(t *testing.T) {
	conf, _ := fileConf(t, "10.20.0.0/24")
	const n = 32
	addrs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := localAdd(context.Background(), conf, own(fmt.Sprintf("g%d", i)))
			if err != nil {
				t.Error(err)
				return
			}
			addrs[i] = res.IPs[0].Address.String()
		})
	}
	wg.Wait()
	slices.Sort(addrs)
	if len(slices.Compact(slices.Clone(addrs))) != n {
		t.Fatalf("%d goroutines got duplicate addresses: %v", n, addrs)
	}
	for i := range n {
		wg.Go(func() {
			if err := localDel(context.Background(), conf, own(fmt.Sprintf("g%d", i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	assertEmpty(t, conf)
}

func TestFileConcurrentProcesses(t *testing.T) {
	conf, stdin := fileConf(t, "10.21.0.0/24")
	const procs, each = 6, 10
	outs := make([][]string, procs)
	runAll := func(verb string) {
		var wg sync.WaitGroup
		for p := range procs {
			wg.Go(func() {
				out, err := helperCmd(verb, stdin, fmt.Sprintf("p%d", p), each).Output()
				if err != nil {
					t.Errorf("child %d %s: %v", p, verb, err)
				}
				outs[p] = strings.Fields(string(out))
			})
		}
		wg.Wait()
	}
	runAll("add")
	all := slices.Concat(outs...)
	slices.Sort(all)
	if len(all) != procs*each || len(slices.Compact(slices.Clone(all))) != procs*each {
		t.Fatalf("children got %d addresses, some shared: %v", len(all), all)
	}
	runAll("del")
	assertEmpty(t, conf)
}

// TestFileSurvivesSIGKILL kills children at arbitrary points of ADDs and DELs
// and checks the store is consistent: every record parses and is listed in
// its owner's index, so DEL of every indexed owner empties the store.
func TestFileSurvivesSIGKILL(t *testing.T) {
	conf, stdin := fileConf(t, "10.22.0.0/24")
	rounds := 8
	if testing.Short() {
		rounds = 2
	}
	for round := range rounds {
		var cmds []*exec.Cmd
		for p := range 3 {
			cmd := helperCmd("churn", stdin, fmt.Sprintf("r%dp%d", round, p), 4)
			cmd.Stderr = nil // killed children may have something to say; not news
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, cmd)
		}
		time.Sleep(time.Duration(30+rand.IntN(70)) * time.Millisecond)
		for _, cmd := range cmds {
			_ = cmd.Process.Signal(syscall.SIGKILL) // it may have died already; Wait tells
			if err := cmd.Wait(); err == nil {
				t.Fatalf("a churn child exited by itself")
			}
		}
		checkConsistent(t, conf)
	}
	for _, ix := range indexOwners(t, conf) {
		if err := localDel(context.Background(), conf, ix); err != nil {
			t.Fatal(err)
		}
	}
	assertEmpty(t, conf)
	if err := localGC(context.Background(), conf, nil); err != nil { // sweeps temp files
		t.Fatal(err)
	}
	for _, dir := range []string{"", "owners"} {
		entries, _ := os.ReadDir(filepath.Join(conf.DataDir, conf.Name, dir))
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".tmp") {
				t.Errorf("GC left temp file %s", e.Name())
			}
		}
	}
}

// checkConsistent reads the store as an operator would and checks the
// invariant: each record parses and its owner's index lists it.
func checkConsistent(t *testing.T, conf *config.IPAMConfig) {
	t.Helper()
	list, err := local(conf).List(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(conf.DataDir, conf.Name)
	for _, r := range list {
		if r.Problem != "" {
			t.Errorf("record of %s unreadable after a crash: %s", r.Addr, r.Problem)
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "owners", r.Owner.ContainerID+"@"+r.Owner.IfName))
		if err != nil || !slices.Contains(strings.Fields(string(b)), r.Addr.String()) {
			t.Errorf("record %s of %s is not in its owner's index (%q, %v)", r.Addr, r.Owner, b, err)
		}
	}
}

func indexOwners(t *testing.T, conf *config.IPAMConfig) []Owner {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(conf.DataDir, conf.Name, "owners"))
	if err != nil {
		t.Fatal(err)
	}
	var owners []Owner
	for _, e := range entries {
		if id, ifname, ok := strings.Cut(e.Name(), "@"); ok && !strings.HasPrefix(e.Name(), ".") {
			owners = append(owners, Owner{ContainerID: id, IfName: ifname})
		}
	}
	return owners
}

// TestFileAfterInterruptedAdd builds by hand what a crash inside ADD leaves
// (the owner's index lists an address whose record was never written) and
// checks CHECK, DEL, ADD and GC all cope.
func TestFileAfterInterruptedAdd(t *testing.T) {
	ctx := context.Background()
	conf, _ := fileConf(t, "10.23.0.0/24")
	dir := filepath.Join(conf.DataDir, conf.Name)
	if _, err := localAdd(ctx, conf, own("other")); err != nil { // creates the layout, takes .2
		t.Fatal(err)
	}
	half := func(id string) string {
		path := filepath.Join(dir, "owners", id+"@eth0")
		if err := os.WriteFile(path, []byte(id+"@eth0\n10.23.0.3\n10.23.0.2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	half("crashed")
	_, err := local(conf).Check(ctx, conf, own("crashed"))
	wantCode(t, err, cnierr.UnknownContainer, "crashed")
	if err := localDel(ctx, conf, own("crashed")); err != nil {
		t.Fatal(err)
	}
	if _, err := local(conf).Check(ctx, conf, own("other")); err != nil {
		t.Errorf("DEL of a half-added owner released someone else's address: %v", err)
	}
	// A retried ADD gets an address and a clean index.
	path := half("retry")
	res, err := localAdd(ctx, conf, own("retry"))
	if err != nil {
		t.Fatal(err)
	}
	got := netip.MustParsePrefix(res.IPs[0].Address.String()).Addr()
	if b, _ := os.ReadFile(path); string(b) != "retry@eth0\n"+got.String()+"\n" {
		t.Errorf("index after retried ADD = %q, want only %s", b, got)
	}
	half("gcme")
	if err := localGC(ctx, conf, []Owner{own("other"), own("retry")}); err != nil {
		t.Fatal(err)
	}
	owners := indexOwners(t, conf)
	slices.SortFunc(owners, func(a, b Owner) int { return strings.Compare(a.ContainerID, b.ContainerID) })
	if want := []Owner{own("other"), own("retry")}; !slices.Equal(owners, want) {
		t.Errorf("indexes after GC: %v, want %v", owners, want)
	}
}

func TestFileRebootReleasesAll(t *testing.T) {
	ctx := context.Background()
	conf, _ := fileConf(t, "10.24.0.0/24")
	st, err := store.NewFile(conf.DataDir, conf.Name)
	if err != nil {
		t.Fatal(err)
	}
	st.BootIDPath = filepath.Join(t.TempDir(), "boot_id")
	if err := os.WriteFile(st.BootIDPath, []byte("first\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := newTest(conf, st)
	for _, id := range []string{"a", "b"} {
		if _, err := a.Add(ctx, own(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(st.BootIDPath, []byte("second\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = a.Check(ctx, own("a"))
	wantCode(t, err, cnierr.UnknownContainer)
	assertEmpty(t, conf)
}

func TestFileStatus(t *testing.T) {
	ctx := context.Background()
	conf, _ := fileConf(t, "10.25.0.0/30") // one allocatable address: .2
	if err := local(conf).Status(ctx, conf); err != nil {
		t.Fatal(err)
	}
	if _, err := localAdd(ctx, conf, own("a")); err != nil {
		t.Fatal(err)
	}
	wantCode(t, local(conf).Status(ctx, conf), cnierr.PluginNotAvailable, "no free address")

	// A dataDir that cannot be created (a file is in the way).
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := *conf
	bad.DataDir = blocker
	wantCode(t, local(&bad).Status(ctx, &bad), cnierr.PluginNotAvailable, blocker)
}

// BenchmarkFileAddDel measures one ADD plus one DEL through the public API
// (store opened per call, as the plugin does) with N reservations present.
func BenchmarkFileAddDel(b *testing.B) {
	for _, n := range []int{0, 1000} {
		b.Run(fmt.Sprintf("existing=%d", n), func(b *testing.B) {
			ctx := context.Background()
			conf, _ := fileConf(b, "10.30.0.0/16")
			for i := range n {
				if _, err := localAdd(ctx, conf, own(fmt.Sprintf("pre%d", i))); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; b.Loop(); i++ {
				o := own(fmt.Sprintf("bench%d", i))
				if _, err := localAdd(ctx, conf, o); err != nil {
					b.Fatal(err)
				}
				if err := localDel(ctx, conf, o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
