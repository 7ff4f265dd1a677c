package plugin

// The plugin tested as Go functions: each test builds a sandbox (a node
// namespace and container namespaces beside it, internal/testnet) and runs
// its body in a child process whose every thread is in the node namespace
// (testnet.InNode), as a plugin process's are: DEL runs kernel work on
// goroutines of its own, which a single thread switched into a namespace
// would not cover. Calls go through Plugin.run, the code skel calls, with
// the allocator injected: the local store in a temp dir, wrapped where a
// test makes IPAM fail.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/shaping"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

// node is one test's view of its node namespace: the plugin, its
// allocator and the network's config.
type node struct {
	t       *testing.T
	sb      *testnet.Sandbox
	plugin  *Plugin
	alloc   *faultyAllocator
	dataDir string
}

// inNode runs the rest of the test inside a fresh node namespace; it
// returns nil in the parent, which must then return.
func inNode(t *testing.T) *node {
	t.Helper()
	sb := testnet.New(t)
	if !sb.InNode(t) {
		return nil
	}
	dataDir := t.TempDir()
	f := &faultyAllocator{Allocator: ipam.NewLocal(dataDir, ipam.LocalOptions{})}
	p := &Plugin{openAllocator: func(*config.IPAMConfig) (ipam.Allocator, io.Closer) { return f, io.NopCloser(nil) },
		nodeLock: filepath.Join(t.TempDir(), "node.lock")}
	return &node{t: t, sb: sb, plugin: p, alloc: f, dataDir: dataDir}
}

// faultyAllocator is an allocator whose calls fail on demand: the way a
// test makes IPAM fail at a given point, without hooks in the plugin.
type faultyAllocator struct {
	ipam.Allocator
	mu                                   sync.Mutex // guards the fields below
	failAllocate, failRelease, failCheck error
	// rewrite, when set, changes Allocate's answer (an allocator that
	// answers wrongly).
	rewrite func([]ipam.Address) []ipam.Address
}

// reset makes every call work again.
func (f *faultyAllocator) reset() {
	f.set(func(f *faultyAllocator) { f.failAllocate, f.failRelease, f.failCheck, f.rewrite = nil, nil, nil, nil })
}

func (f *faultyAllocator) set(fn func(*faultyAllocator)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faultyAllocator) Allocate(ctx context.Context, conf *config.IPAMConfig, o ipam.Owner) ([]ipam.Address, error) {
	f.mu.Lock()
	fail, rewrite := f.failAllocate, f.rewrite
	f.mu.Unlock()
	if fail != nil {
		return nil, fail
	}
	addrs, err := f.Allocator.Allocate(ctx, conf, o)
	if err == nil && rewrite != nil {
		addrs = rewrite(addrs)
	}
	return addrs, err
}

func (f *faultyAllocator) Release(ctx context.Context, conf *config.IPAMConfig, o ipam.Owner) (int, error) {
	f.mu.Lock()
	fail := f.failRelease
	f.mu.Unlock()
	if fail != nil {
		return 0, fail
	}
	return f.Allocator.Release(ctx, conf, o)
}

func (f *faultyAllocator) Check(ctx context.Context, conf *config.IPAMConfig, o ipam.Owner) ([]netip.Addr, error) {
	f.mu.Lock()
	fail := f.failCheck
	f.mu.Unlock()
	if fail != nil {
		return nil, fail
	}
	return f.Allocator.Check(ctx, conf, o)
}

// netConf is a network config; extra holds more top-level members
// (`"ipMasq":true,`), ipamExtra more members of "ipam", routes the IPAM
// routes (default: a default route), dataDir the IPAM data directory
// (default: the node's; the allocator is the node's whatever it says).
type netConf struct {
	name, bridge, subnet, extra, ipamExtra, routes, prevResult, dataDir string
}

func (c netConf) json(dataDir string) []byte {
	if c.dataDir != "" {
		dataDir = c.dataDir
	}
	prev := ""
	if c.prevResult != "" {
		prev = `,"prevResult":` + c.prevResult
	}
	routes := c.routes
	if routes == "" {
		routes = `[{"dst":"0.0.0.0/0"}]`
	}
	return fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":%q,"type":"pier","bridge":%q,%s
		"ipam":{"type":"pier-ipam","subnet":%q,"dataDir":%q,%s"routes":%s}%s}`,
		c.name, c.bridge, c.extra, c.subnet, dataDir, c.ipamExtra, routes, prev)
}

// attachment is one container interface of a test.
type attachment struct {
	id     string
	ns     *testnet.NS
	ifName string
}

func (n *node) container(id string) attachment {
	return attachment{id: id, ns: n.sb.Container(), ifName: "eth0"}
}

func (a attachment) args(stdin []byte, netns string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: a.id, Netns: netns, IfName: a.ifName, StdinData: stdin}
}

var verbs = map[string]func(*call, context.Context) (types.Result, error){
	"ADD": (*call).add, "DEL": (*call).del, "CHECK": (*call).check, "GC": (*call).gc, "STATUS": (*call).status,
}

// do runs one verb for a as skel would, minus printing.
func (n *node) do(verb string, a attachment, c netConf) (types.Result, error) {
	netns := ""
	if a.ns != nil {
		netns = a.ns.Path
	}
	return n.doIn(verb, a, c, netns)
}

func (n *node) doIn(verb string, a attachment, c netConf, netns string) (types.Result, error) {
	res, _, err := n.plugin.run(verb, a.args(c.json(n.dataDir), netns), verbs[verb])
	return res, err
}

// add runs ADD and fails the test unless it succeeds.
func (n *node) add(a attachment, c netConf) *current.Result {
	n.t.Helper()
	res, err := n.do("ADD", a, c)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", a.id, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		n.t.Fatal(err)
	}
	return cur
}

// withPrev returns c with res as its prevResult (CHECK, DEL).
func withPrev(t *testing.T, c netConf, res *current.Result) netConf {
	t.Helper()
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	c.prevResult = string(b)
	return c
}

// wantCode fails unless err carries the CNI code and mentions every part.
func wantCode(t *testing.T, err error, code uint, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want code %d", code)
	}
	if got := cnierr.CodeOf(err); got != code {
		t.Fatalf("code %d (%v), want %d", got, err, code)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

// state is what an attachment left on the node and in its container.
type state struct {
	hostVeth, ifb, containerLink bool
	reserved                     []netip.Addr
	masq                         []netip.Addr
	nodeElements                 int
}

func (n *node) state(a attachment, c netConf) state {
	n.t.Helper()
	var s state
	host := veth.HostName(a.id, a.ifName)
	_, err := netlink.LinkByName(host)
	s.hostVeth = err == nil
	_, err = netlink.LinkByName(shaping.IfbName(host))
	s.ifb = err == nil
	if a.ns != nil {
		out, _ := a.ns.Run("ip", "-o", "link", "show", "dev", a.ifName)
		s.containerLink = strings.Contains(out, a.ifName+"@")
	}
	conf, err := config.LoadIPAM(c.json(n.dataDir), "")
	if err != nil {
		n.t.Fatal(err)
	}
	res, err := ipam.NewLocal(n.dataDir, ipam.LocalOptions{}).List(context.Background(), conf)
	if err != nil {
		n.t.Fatal(err)
	}
	for _, r := range res {
		if r.Owner == (ipam.Owner{ContainerID: a.id, IfName: a.ifName}) {
			s.reserved = append(s.reserved, r.Addr)
		}
	}
	elems, err := nat.ListMasq(c.name)
	if err != nil {
		n.t.Fatal(err)
	}
	owner := nat.StoredOwner(a.id + "/" + a.ifName)
	for _, e := range elems {
		if e.Owner == owner {
			s.masq = append(s.masq, e.Addr)
		}
	}
	all, err := nat.ListNodeElements()
	if err != nil {
		n.t.Fatal(err)
	}
	s.nodeElements = all.Owned(nat.NodeOwner(c.name, a.id+"/"+a.ifName)).Len()
	return s
}

// wantNothing fails unless a left nothing behind.
func (n *node) wantNothing(a attachment, c netConf) {
	n.t.Helper()
	if s := n.state(a, c); s.hostVeth || s.ifb || s.containerLink || len(s.reserved) > 0 || len(s.masq) > 0 || s.nodeElements > 0 {
		n.t.Errorf("%s left %+v", a.id, s)
	}
}

func addrsOf(res *current.Result) []netip.Addr {
	var out []netip.Addr
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// mustRun runs a command in the test process's namespace (the node's).
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
