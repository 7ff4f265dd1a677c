// Package e2e drives the built `pier` binary the way a runtime does — one
// process per CNI call, inside a node namespace — and checks what it left in
// the kernel. Every test builds its own sandbox (internal/testnet), which is
// removed even when the test fails.
package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// node is one test's sandbox with the plugin binaries and an IPAM dataDir.
type node struct {
	t       *testing.T
	sb      *testnet.Sandbox
	binDir  string
	dataDir string
	cniPath string
}

func newNode(t *testing.T) *node {
	t.Helper()
	sb := testnet.New(t)
	bin := testnet.Binaries(t)
	return &node{t: t, sb: sb, binDir: bin, dataDir: t.TempDir(), cniPath: bin + ":/usr/lib/cni"}
}

// attachment names one container interface.
type attachment struct {
	ns     *testnet.NS
	id     string
	ifName string
}

func (n *node) container(id string) attachment {
	return attachment{ns: n.sb.Container(), id: id, ifName: "eth0"}
}

// call runs `pier` with a CNI verb for an attachment; extra env entries
// (CNI_ARGS=…) are appended.
func (n *node) call(verb string, a attachment, conf string, extra ...string) testnet.PluginRun {
	n.t.Helper()
	netns := ""
	if a.ns != nil {
		netns = a.ns.Path
	}
	env := []string{
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + a.id, "CNI_NETNS=" + netns,
		"CNI_IFNAME=" + a.ifName, "CNI_PATH=" + n.cniPath,
	}
	return n.sb.Exec(filepath.Join(n.binDir, "pier"), append(env, extra...), []byte(conf))
}

func (n *node) mustAdd(a attachment, conf string, extra ...string) string {
	n.t.Helper()
	r := n.call("ADD", a, conf, extra...)
	if r.ExitCode != 0 {
		n.t.Fatalf("ADD %s: exit %d\nstdout: %s\nstderr: %s", a.id, r.ExitCode, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

func (n *node) mustDel(a attachment, conf string) {
	n.t.Helper()
	r := n.call("DEL", a, conf)
	if r.ExitCode != 0 || r.Stdout != "" {
		n.t.Fatalf("DEL %s: exit %d\nstdout: %s\nstderr: %s", a.id, r.ExitCode, r.Stdout, r.Stderr)
	}
}

// cniError decodes a failed call's stdout as a CNI error and checks its code.
func cniError(t *testing.T, r testnet.PluginRun, wantCode uint) string {
	t.Helper()
	if r.ExitCode != 1 {
		t.Fatalf("want exit 1 with CNI error %d, got exit %d\nstdout: %s\nstderr: %s", wantCode, r.ExitCode, r.Stdout, r.Stderr)
	}
	var e struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &e); err != nil {
		t.Fatalf("stdout is not a CNI error: %v\n%s", err, r.Stdout)
	}
	if e.Code != wantCode {
		t.Fatalf("want code %d, got %d: %s", wantCode, e.Code, e.Msg)
	}
	if strings.Contains(r.Stdout, "goroutine ") || strings.Contains(r.Stderr, "goroutine ") {
		t.Fatalf("Go stack trace in output:\n%s\n%s", r.Stdout, r.Stderr)
	}
	return e.Msg
}

// ipJSON runs `ip -j ARGS` in ns and decodes the result.
func ipJSON[T any](t *testing.T, ns *testnet.NS, args ...string) T {
	t.Helper()
	out := ns.MustRun(t, append([]string{"ip", "-j"}, args...)...)
	var v T
	if strings.TrimSpace(out) == "" {
		return v
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("ip -j %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

type ipLink struct {
	IfName    string   `json:"ifname"`
	Master    string   `json:"master"`
	Flags     []string `json:"flags"`
	OperState string   `json:"operstate"`
	Address   string   `json:"address"`
	MTU       int      `json:"mtu"`
	IfAlias   string   `json:"ifalias"`
	AddrInfo  []struct {
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Family    string `json:"family"`
		Scope     string `json:"scope"`
	} `json:"addr_info"`
	LinkInfo struct {
		InfoSlaveData struct {
			Hairpin bool `json:"hairpin"`
		} `json:"info_slave_data"`
	} `json:"linkinfo"`
}

func (l ipLink) addrs(family string) []string {
	var out []string
	for _, a := range l.AddrInfo {
		if a.Family == family && a.Scope == "global" {
			out = append(out, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
	}
	return out
}

type ipRoute struct {
	Dst     string `json:"dst"`
	Gateway string `json:"gateway"`
	Dev     string `json:"dev"`
}

// bridgePorts lists the links enslaved to bridge in ns.
func bridgePorts(t *testing.T, ns *testnet.NS, bridge string) []ipLink {
	t.Helper()
	if _, err := ns.Run("ip", "link", "show", "dev", bridge); err != nil {
		return nil
	}
	return ipJSON[[]ipLink](t, ns, "-d", "link", "show", "master", bridge)
}

// masqElements returns the elements (with comments) of a network's v4 or v6
// masquerade map, read with nft in the node namespace.
func masqElements(t *testing.T, ns *testnet.NS, set string) []string {
	t.Helper()
	out, err := ns.Run("nft", "-j", "list", "map", "inet", "pier", set)
	if err != nil {
		return nil // no table or map: no elements
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j: %v\n%s", err, out)
	}
	var elems []string
	for _, obj := range doc.Nftables {
		raw, ok := obj["map"]
		if !ok {
			continue
		}
		var s struct {
			Elem [][2]json.RawMessage `json:"elem"` // [key, verdict] pairs
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("nft map: %v", err)
		}
		for _, e := range s.Elem {
			elems = append(elems, elemString(e[0]))
		}
	}
	return elems
}

// elemString renders an nft JSON set element as "addr" or "addr comment".
func elemString(raw json.RawMessage) string {
	var plain string
	if json.Unmarshal(raw, &plain) == nil {
		return plain
	}
	var wrapped struct {
		Elem struct {
			Val     any    `json:"val"`
			Comment string `json:"comment"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &wrapped) == nil {
		return strings.TrimSpace(fmt.Sprintf("%v %s", wrapped.Elem.Val, wrapped.Elem.Comment))
	}
	return string(raw)
}

// storeFiles lists the files under the IPAM dataDir (reservations, owner
// index), relative to it, skipping the lock and bookkeeping files.
func storeFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dataDir, p)
		files = append(files, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
