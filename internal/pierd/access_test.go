package pierd

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipamrpc"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// helperEnv makes the test binary a pierd client (see TestMain) running the
// clientScript in the variable's value: the access tests run it as another
// uid, through SysProcAttr.Credential.
const helperEnv = "PIERD_TEST_CLIENT"

func TestMain(m *testing.M) {
	if script := os.Getenv(helperEnv); script != "" {
		os.Exit(runHelperClient(script))
	}
	os.Exit(m.Run())
}

// clientScript is what the helper does: hold connections, or make calls.
type clientScript struct {
	Socket string
	// Hold opens this many connections (to Socket, or to the TCP address
	// HoldTCP), prints one line, and keeps them until its stdin closes.
	Hold    int
	HoldTCP string
	Ops     []clientOp
}

// clientOp is one call: Op is add, del, gc, check, list or status through
// the plugin's client about Network, or leases-all and status-all (every
// network) through pierctl's grpc-go client.
type clientOp struct{ Op, Network, Owner string }

// opResult is a call's outcome: CNI code 0 for success.
type opResult struct {
	Code uint   `json:"code"`
	Msg  string `json:"msg"`
}

func runHelperClient(script string) int {
	var s clientScript
	if err := json.Unmarshal([]byte(script), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if s.Hold > 0 {
		return holdConns(s)
	}
	var out []opResult
	for _, op := range s.Ops {
		r := opResult{}
		if err := runOp(s.Socket, op); err != nil {
			r = opResult{Code: cnierr.CodeOf(err), Msg: err.Error()}
		}
		out = append(out, r)
	}
	_ = json.NewEncoder(os.Stdout).Encode(out) // the parent reads it; nothing else to do on failure
	return 0
}

func runOp(socket string, op clientOp) error {
	ctx := context.Background()
	var conf *config.IPAMConfig
	if op.Network != "" {
		conf = netConf(nil, socket, op.Network)
	}
	owner := ipam.Owner{ContainerID: op.Owner, IfName: "eth0"}
	c := lite.New(socket)
	defer c.Close()
	switch op.Op {
	case "add":
		_, err := c.Allocate(ctx, conf, owner)
		return err
	case "del":
		_, err := c.Release(ctx, conf, owner)
		return err
	case "gc":
		_, err := c.GC(ctx, conf, nil)
		return err
	case "check":
		_, err := c.Check(ctx, conf, owner)
		return err
	case "list":
		_, err := c.List(ctx, conf)
		return err
	case "status":
		return c.Status(ctx, conf)
	}
	gc, err := ipamrpc.Dial(socket)
	if err != nil {
		return err
	}
	defer gc.Close()
	switch op.Op {
	case "leases-all":
		_, err = gc.Leases(ctx, "")
	case "status-all":
		_, err = gc.Daemon(ctx)
	default:
		err = fmt.Errorf("unknown op %q", op.Op)
	}
	return err
}

func holdConns(s clientScript) int {
	var conns []net.Conn
	network, addr := "unix", s.Socket
	if s.HoldTCP != "" {
		network, addr = "tcp", s.HoldTCP
	}
	for range s.Hold {
		c, err := net.Dial(network, addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		conns = append(conns, c)
	}
	fmt.Println("holding")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it
	for _, c := range conns {
		_ = c.Close() // exiting closes them anyway
	}
	return 0
}

// netConf is network's config for daemon mode, a /29 of its own.
func netConf(t *testing.T, socket, network string) *config.IPAMConfig {
	subnet := map[string]string{"net1": "10.30.0.0/29", "mine": "10.31.0.0/29", "theirs": "10.32.0.0/29"}[network]
	conf, err := config.LoadIPAM([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,
		"ipam":{"type":"pier-ipam","daemonSocket":%q,"subnet":%q}}`, network, socket, subnet)), "")
	if err != nil {
		if t == nil {
			panic(err)
		}
		t.Fatal(err)
	}
	return conf
}

// helper runs this test binary as uid (a copy other users can execute).
type helper struct {
	t    *testing.T
	path string
	base string // a 0755 directory for sockets the helper must reach
}

func newHelper(t *testing.T) *helper {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	base, err := os.MkdirTemp("", "pierd-uid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	h := &helper{t: t, path: filepath.Join(base, "client"), base: base}
	copyExecutable(t, h.path)
	return h
}

func (h *helper) socket(name string) string { return filepath.Join(h.base, name, "pierd.sock") }

func (h *helper) command(uid int, s clientScript) *exec.Cmd {
	b, err := json.Marshal(s)
	if err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command(h.path)
	cmd.Env = []string{helperEnv + "=" + string(b)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	return cmd
}

// run makes the calls of ops as uid and returns their results.
func (h *helper) run(uid int, socket string, ops ...clientOp) []opResult {
	h.t.Helper()
	out, err := h.command(uid, clientScript{Socket: socket, Ops: ops}).Output()
	if err != nil {
		h.t.Fatalf("helper: %v\n%s", err, out)
	}
	var res []opResult
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(ops) {
		h.t.Fatalf("helper output %q: %v", out, err)
	}
	return res
}

// hold makes uid open n connections and keep them until the returned
// function is called.
func (h *helper) hold(uid int, s clientScript) (release func()) {
	h.t.Helper()
	cmd := h.command(uid, s)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		_ = stdin.Close() // the helper exits on EOF
		if err := cmd.Wait(); err != nil {
			h.t.Errorf("holding helper: %v", err)
		}
	}
	h.t.Cleanup(release)
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "holding\n" {
		h.t.Fatalf("holding helper: %q %v", line, err)
	}
	return release
}

// TestPeerUIDRefusal: a uid that may not call learns why, with code 5,
// whether the socket's modes or the gate stop it; a granted uid gets in.
func TestPeerUIDRefusal(t *testing.T) {
	h := newHelper(t)
	cases := []struct {
		name     string
		allow    []Grant
		wantCode uint
		wantMsg  string
	}{
		{"root only: the socket's modes stop it", nil, cnierr.IOFailure, "permission denied"},
		{"other uids allowed: the gate stops it at accept", []Grant{{UID: 12345, Networks: []string{"net1"}}}, cnierr.IOFailure, "refuses uid 65534"},
		{"uid allowed on the network", []Grant{{UID: 65534, Networks: []string{"net1"}}}, 0, ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			socket := h.socket(fmt.Sprint("run", i))
			d := start(t, Options{Socket: socket, Allow: tc.allow})
			defer stop(t, d)
			res := h.run(65534, socket, clientOp{Op: "add", Network: "net1", Owner: "unprivileged"})[0]
			if res.Code != tc.wantCode || !strings.Contains(res.Msg, tc.wantMsg) {
				t.Fatalf("got code %d %q, want code %d with %q", res.Code, res.Msg, tc.wantCode, tc.wantMsg)
			}
		})
	}
}

// TestNetworkScope guards other networks against an allowed uid: it may
// use the networks --allow-uid gives it, and nothing else: no Allocate,
// Release or GC of another network (which would free addresses still in
// use, to be handed out twice), no call about every network. Root still
// may do anything, on the user's network too.
func TestNetworkScope(t *testing.T) {
	h := newHelper(t)
	socket := h.socket("run")
	start(t, Options{Socket: socket, Allow: []Grant{{UID: 65534, Networks: []string{"mine"}}}})
	ctx := context.Background()
	root := lite.New(socket)
	defer root.Close()
	rootOwner := ipam.Owner{ContainerID: "c-root", IfName: "eth0"}
	if _, err := root.Allocate(ctx, netConf(t, socket, "net1"), rootOwner); err != nil {
		t.Fatal(err)
	}

	denied := opResult{Code: cnierr.IOFailure}
	for _, step := range []struct {
		op   clientOp
		want opResult
		msg  string
	}{
		{clientOp{Op: "add", Network: "mine", Owner: "u1"}, opResult{}, ""},
		{clientOp{Op: "check", Network: "mine", Owner: "u1"}, opResult{}, ""},
		{clientOp{Op: "list", Network: "mine"}, opResult{}, ""},
		{clientOp{Op: "status", Network: "mine"}, opResult{}, ""},
		{clientOp{Op: "add", Network: "net1", Owner: "u2"}, denied, `may not use network "net1"`},
		{clientOp{Op: "del", Network: "net1", Owner: "c-root"}, denied, `may not use network "net1"`},
		{clientOp{Op: "gc", Network: "net1"}, denied, `may not use network "net1"`},
		{clientOp{Op: "check", Network: "net1", Owner: "c-root"}, denied, `may not use network "net1"`},
		{clientOp{Op: "list", Network: "net1"}, denied, `may not use network "net1"`},
		{clientOp{Op: "leases-all"}, denied, "calls about every network are root's"},
		{clientOp{Op: "status-all"}, denied, "calls about every network are root's"},
	} {
		got := h.run(65534, socket, step.op)[0]
		if got.Code != step.want.Code || !strings.Contains(got.Msg, step.msg) {
			t.Errorf("uid 65534 %+v: code %d %q; want code %d with %q", step.op, got.Code, got.Msg, step.want.Code, step.msg)
		}
	}
	if held, err := root.Check(ctx, netConf(t, socket, "net1"), rootOwner); err != nil || len(held) != 1 {
		t.Fatalf("root's reservation after the user's attempts: %v %v", held, err)
	}
	// Root may GC the user's network: u1 goes.
	mine := netConf(t, socket, "mine")
	if _, err := root.GC(ctx, mine, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Check(ctx, mine, ipam.Owner{ContainerID: "u1", IfName: "eth0"}); cnierr.CodeOf(err) != cnierr.UnknownContainer {
		t.Fatalf("u1 after root's GC of the user's network: %v, want code 3", err)
	}
}

// TestConnLimits guards pierd's file descriptors, and root's access,
// against local users: an allowed uid that opens many connections makes
// pierd hold at most its share, all users other than root together at
// most half of the total, and root is served meanwhile.
func TestConnLimits(t *testing.T) {
	if !inNetns(t) {
		return
	}
	h := newHelper(t)
	socket := h.socket("run")
	d := start(t, Options{Socket: socket, MetricsAddr: "127.0.0.1:0",
		Allow:  []Grant{{UID: 65534, Networks: []string{"mine"}}, {UID: 65533, Networks: []string{"theirs"}}},
		Limits: ConnLimits{Total: 8, PerUID: 3}})
	baseline := socketFDs(t)
	refused := func() int { return metricValue(t, d, `pierd_connections_refused_total{reason="limit"}`) }

	release := h.hold(65534, clientScript{Socket: socket, Hold: 20})
	waitFor(t, "pierd to take all 20 connections", func() bool { return d.gate.heldBy(65534)+refused() == 20 })
	if got := d.gate.heldBy(65534); got != 3 {
		t.Errorf("pierd holds %d connections of uid 65534, want its limit 3", got)
	}
	if n := socketFDs(t) - baseline; n > 3 {
		t.Errorf("pierd holds %d more sockets than before, want at most 3", n)
	}
	// Users other than root share half of the 8: one slot is left.
	release2 := h.hold(65533, clientScript{Socket: socket, Hold: 20})
	waitFor(t, "pierd to take the second user's 20", func() bool { return d.gate.heldBy(65534)+d.gate.heldBy(65533)+refused() == 40 })
	if got := d.gate.heldBy(65533); got != 1 {
		t.Errorf("pierd holds %d connections of uid 65533, want the 1 left of the users' half", got)
	}
	if got := h.run(65534, socket, clientOp{Op: "add", Network: "mine", Owner: "u1"})[0]; got.Code != cnierr.TryAgainLater {
		t.Errorf("a call of uid 65534 over its limit: code %d %q, want 11", got.Code, got.Msg)
	}
	// Root has the other half, at once.
	ctx := context.Background()
	for i := range 4 {
		c := lite.New(socket)
		defer c.Close() // held open: four root connections at the same time
		if _, err := c.Allocate(ctx, netConf(t, socket, "net1"), ipam.Owner{ContainerID: fmt.Sprint("r", i), IfName: "eth0"}); err != nil {
			t.Fatalf("root's call %d while users hold their share: %v", i, err)
		}
	}
	if got := metricValue(t, d, "pierd_connections"); got != 8 {
		t.Errorf("pierd_connections = %d, want 8", got)
	}
	release()
	release2()
	waitFor(t, "the users' connections to close", func() bool { return d.gate.heldBy(65534)+d.gate.heldBy(65533) == 0 })
}

// heldBy is how many connections the gate holds for uid.
func (g *gate) heldBy(uid uint32) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.byUID[uid]
}

// socketFDs counts this process's open unix sockets: pierd's, in these
// tests (the metrics scrapes are TCP).
func socketFDs(t *testing.T) int { return socketsIn(t, "/proc/net/unix", 6) }

// tcpFDs counts this process's open TCP sockets.
func tcpFDs(t *testing.T) int {
	return socketsIn(t, "/proc/net/tcp", 9) + socketsIn(t, "/proc/net/tcp6", 9)
}

// socketsIn counts this process's descriptors of the sockets a /proc/net
// table lists (column: where the table has the inode).
func socketsIn(t *testing.T, table string, column int) int {
	t.Helper()
	b, err := os.ReadFile(table)
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > column {
			inodes[f[column]] = true
		}
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		inode, ok := strings.CutPrefix(target, "socket:[")
		if err == nil && ok && inodes[strings.TrimSuffix(inode, "]")] {
			n++
		}
	}
	return n
}

// metricValue reads one sample of pierd's /metrics; 0 when absent.
func metricValue(t *testing.T, d *Daemon, sample string) int {
	t.Helper()
	for _, line := range strings.Split(get(t, "http://"+d.MetricsAddr()+"/metrics", 200), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			var n float64
			if _, err := fmt.Sscan(v, &n); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return int(n)
		}
	}
	return 0
}
