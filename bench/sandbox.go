package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// sandbox is the node namespace every plugin runs in, the container
// namespaces made for the run, and the IPAM data directory.
type sandbox struct {
	mu      sync.Mutex // guards ctrs: close may run from the signal handler
	closed  sync.Once
	prefix  string
	node    string
	nodeNS  string
	ctrs    []string
	dataDir string
	slots   map[string]int // interfaces already used in each shared namespace
	shared  string         // the shared namespace being filled
	seq     int
}

// impl is one implementation under test: its binary and how to write a
// network config for it.
type impl struct {
	name    string
	label   string // how the tables call it
	bin     string
	cniPath string
	conf    func(network, bridge, subnet string, masq bool) string
}

func implementations(o options, dataDir string) ([]impl, error) {
	binDir, err := filepath.Abs(o.binDir)
	if err != nil {
		return nil, err
	}
	extra := ""
	if o.pierExtra != "" {
		extra = o.pierExtra + ","
	}
	pierConf := func(network, bridge, subnet string, masq bool) string {
		return fmt.Sprintf(`{"cniVersion":"0.4.0","name":%q,"type":"pier","bridge":%q,"isGateway":true,"ipMasq":%v,%s"ipam":{"type":"pier-ipam","subnet":%q,"dataDir":%q}}`,
			network, bridge, masq, extra, subnet, dataDir)
	}
	pier := impl{name: "pier", label: "pier", bin: filepath.Join(binDir, "pier"), cniPath: binDir, conf: pierConf}
	ref := impl{name: "reference", label: "reference", bin: filepath.Join(o.refDir, "bridge"), cniPath: o.refDir,
		conf: func(network, bridge, subnet string, masq bool) string {
			return fmt.Sprintf(`{"cniVersion":"0.4.0","name":%q,"type":"bridge","bridge":%q,"isGateway":true,"ipMasq":%v,"ipam":{"type":"host-local","subnet":%q,"dataDir":%q}}`,
				network, bridge, masq, subnet, dataDir)
		}}
	if o.vs != "" {
		// The other build stands where the reference does: same key,
		// its own label.
		vsDir, err := filepath.Abs(o.vs)
		if err != nil {
			return nil, err
		}
		ref = impl{name: "reference", label: "pier in " + vsDir, bin: filepath.Join(vsDir, "pier"), cniPath: vsDir, conf: pierConf}
	}
	for _, im := range []impl{pier, ref} {
		if _, err := os.Stat(im.bin); err != nil {
			return nil, fmt.Errorf("%s: %w (build with `make build`; the reference comes with Debian's containernetworking-plugins)", im.name, err)
		}
	}
	return []impl{pier, ref}, nil
}

func newSandbox() (*sandbox, error) {
	sb := &sandbox{prefix: fmt.Sprintf("pb%d", os.Getpid()), slots: map[string]int{}}
	sb.node = sb.prefix + "-node"
	sb.nodeNS = "/var/run/netns/" + sb.node
	var err error
	if sb.dataDir, err = os.MkdirTemp("", "pier-bench-"); err != nil {
		return nil, err
	}
	if err := ipNetns("add", sb.node); err != nil {
		return nil, err
	}
	if _, err := sb.inNode("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return sb, nil
}

// close removes every namespace the run made (the node's goes last and
// takes the bridges, veths and firewall state with it) and the data.
func (sb *sandbox) close() {
	sb.closed.Do(sb.remove)
}

func (sb *sandbox) remove() {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	for _, c := range sb.ctrs {
		if err := ipNetns("del", c); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}
	if err := ipNetns("del", sb.node); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
	_ = os.RemoveAll(sb.dataDir) // temp data; nothing to report if it lingers
}

// newContainer makes a fresh container namespace and returns its path.
func (sb *sandbox) newContainer() (string, error) {
	sb.seq++
	name := fmt.Sprintf("%s-c%d", sb.prefix, sb.seq)
	if err := ipNetns("add", name); err != nil {
		return "", err
	}
	sb.mu.Lock()
	sb.ctrs = append(sb.ctrs, name)
	sb.mu.Unlock()
	return "/var/run/netns/" + name, nil
}

// dropContainer deletes a namespace made by newContainer.
func (sb *sandbox) dropContainer(path string) error {
	name := filepath.Base(path)
	sb.mu.Lock()
	for i, c := range sb.ctrs {
		if c == name {
			sb.ctrs = append(sb.ctrs[:i], sb.ctrs[i+1:]...)
			break
		}
	}
	sb.mu.Unlock()
	return ipNetns("del", name)
}

// slot returns a namespace and interface name for a background attachment.
// Background containers share namespaces, 50 interfaces each: what is
// measured is the node side (bridge ports, NAT state, IPAM store), and
// thousands of namespaces would only slow the setup down.
func (sb *sandbox) slot() (nsPath, ifName string, err error) {
	if sb.shared == "" || sb.slots[sb.shared] == 50 {
		if sb.shared, err = sb.newContainer(); err != nil {
			return "", "", err
		}
	}
	n := sb.slots[sb.shared]
	sb.slots[sb.shared] = n + 1
	return sb.shared, fmt.Sprintf("eth%d", n), nil
}

// call is one plugin process: the verb, the attachment and the config.
type call struct {
	im      impl
	verb    string
	id      string
	netns   string
	ifName  string
	conf    string
	elapsed time.Duration
	maxRSS  int64 // KiB
}

// run executes the plugin as a child born in the node namespace and records
// its wall time and peak RSS.
func (sb *sandbox) run(c *call) error {
	cmd := exec.Command(c.im.bin)
	cmd.Env = []string{"CNI_COMMAND=" + c.verb, "CNI_CONTAINERID=" + c.id, "CNI_NETNS=" + c.netns,
		"CNI_IFNAME=" + c.ifName, "CNI_PATH=" + c.im.cniPath, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = strings.NewReader(c.conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := testnet.StartIn(sb.nodeNS, cmd); err != nil {
		return err
	}
	err := cmd.Wait()
	c.elapsed = time.Since(start)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		c.maxRSS = ru.Maxrss
	}
	if err != nil {
		return fmt.Errorf("%s %s %s: %v: %s", c.im.name, c.verb, c.id, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// inNode runs a tool (nft, iptables-save, ip) inside the node namespace.
func (sb *sandbox) inNode(args ...string) (string, error) {
	return inNS(sb.nodeNS, args...)
}

func inNS(nsPath string, args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := testnet.StartIn(nsPath, cmd); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func (sb *sandbox) timeVersion(im impl, runs int) ([]time.Duration, error) {
	var ds []time.Duration
	for range runs {
		cmd := exec.Command(im.bin)
		cmd.Env = []string{"CNI_COMMAND=VERSION"}
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%s VERSION: %w", im.bin, err)
		}
		ds = append(ds, time.Since(start))
	}
	return ds, nil
}

func ipNetns(verb, name string) error {
	if out, err := exec.Command("ip", "netns", verb, name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns %s %s: %v: %s", verb, name, err, out)
	}
	return nil
}
