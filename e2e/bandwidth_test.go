package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/shaping"
	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

// shapedConf limits its containers to rate bits/s both ways. The burst (1
// Mbit, 128 KiB) lets TCP keep the bucket busy through its window changes,
// and adds at most 1 Mbit over a 3 s test: about 3 % at 10 Mbit/s.
func shapedConf(dataDir string, rate uint64, topLevel bool) string {
	limits := fmt.Sprintf(`"ingressRate": %d, "ingressBurst": 1048576, "egressRate": %d, "egressBurst": 1048576`, rate, rate)
	where := `"runtimeConfig": {"bandwidth": {` + limits + `}},`
	if topLevel {
		where = limits + ","
	}
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "shaped", "type": "pier", "bridge": "pier-shaped",
  "isGateway": true, %s
  "ipam": {"type": "pier-ipam", "subnet": "10.25.0.0/24", "dataDir": %q}}`, where, dataDir)
}

// TestBandwidth: a container limited to 10 Mbit/s in each direction
// measures within ±20 % of it with iperf3, into it and out of it (3 s
// each way, from an unlimited neighbour). The limits are
// tc tbf on the host veth (into the container) and on an ifb the host
// veth's ingress is redirected to (out of it); DEL removes the ifb.
func TestBandwidth(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3")
	}
	n := newNode(t)
	const rate = 10_000_000
	conf := shapedConf(n.dataDir, rate, false)
	limited, peer := n.container("limited"), n.container("peer")
	out := n.mustAdd(limited, conf)
	n.mustAdd(peer, strings.Replace(conf, `"runtimeConfig": {"bandwidth"`, `"runtimeConfig": {"unlimited"`, 1))

	hostVeth := veth.HostName("limited", "eth0")
	ifb := shaping.IfbName(hostVeth)
	var r current.Result
	mustDecode(t, out, &r)
	if len(r.Interfaces) != 4 || r.Interfaces[3].Name != ifb {
		t.Errorf("result interfaces %+v: want the ifb %s last, as the reference bandwidth plugin reports it", r.Interfaces, ifb)
	}
	for dev, kind := range map[string]string{hostVeth: "tbf", ifb: "tbf"} {
		if q := n.sb.Node.MustRun(t, "tc", "qdisc", "show", "dev", dev, "root"); !strings.Contains(q, kind) {
			t.Errorf("root qdisc of %s: %s, want %s", dev, q, kind)
		}
	}
	if f := n.sb.Node.MustRun(t, "tc", "filter", "show", "dev", hostVeth, "ingress"); !strings.Contains(f, "mirred") || !strings.Contains(f, ifb) {
		t.Errorf("ingress filter of %s does not redirect to %s:\n%s", hostVeth, ifb, f)
	}
	if r := n.call("CHECK", limited, withPrevResult(conf, strings.TrimSpace(out))); r.ExitCode != 0 {
		t.Errorf("CHECK: exit %d: %s", r.ExitCode, r.Stdout)
	}

	// Into the container: peer sends to limited. Out of it: limited sends
	// to peer (iperf3 -R). One after the other: run at once, each flow's
	// ACKs would queue behind the other's data in the shaper, and TCP
	// would not fill either bucket.
	startIperfServer(t, limited.ns, 5201)
	into, errInto := iperfClient(peer.ns, "10.25.0.2", 5201, false)
	startIperfServer(t, limited.ns, 5202)
	outOf, errOut := iperfClient(peer.ns, "10.25.0.2", 5202, true)
	for _, m := range []struct {
		dir string
		bps float64
		err error
	}{{"into the container", into, errInto}, {"out of the container", outOf, errOut}} {
		if m.err != nil {
			t.Errorf("iperf3 %s: %v", m.dir, m.err)
			continue
		}
		t.Logf("%s: %.2f Mbit/s (limit %.0f)", m.dir, m.bps/1e6, float64(rate)/1e6)
		if m.bps < 0.8*rate || m.bps > 1.2*rate {
			t.Errorf("%s: %.2f Mbit/s, want %.0f ± 20 %%", m.dir, m.bps/1e6, float64(rate)/1e6)
		}
	}

	n.mustDel(limited, conf)
	if _, err := n.sb.Node.Run("ip", "link", "show", "dev", ifb); err == nil {
		t.Errorf("ifb %s left after DEL", ifb)
	}
	n.mustDel(peer, conf)

	// The reference's top-level keys do the same.
	top := n.container("top")
	n.mustAdd(top, shapedConf(n.dataDir, rate, true))
	if q := n.sb.Node.MustRun(t, "tc", "qdisc", "show", "dev", veth.HostName("top", "eth0"), "root"); !strings.Contains(q, "tbf") || !strings.Contains(q, "10Mbit") {
		t.Errorf("top-level ingressRate: root qdisc %s", q)
	}
	n.mustDel(top, shapedConf(n.dataDir, rate, true))
	if _, err := n.sb.Node.Run("ip", "link", "show", "dev", shaping.IfbName(veth.HostName("top", "eth0"))); err == nil {
		t.Error("ifb left after DEL")
	}
}

// startIperfServer runs a one-test iperf3 server in ns until the test
// ends, and returns once it listens.
func startIperfServer(t *testing.T, ns *testnet.NS, port int) {
	t.Helper()
	cmd := exec.Command("iperf3", "-s", "-1", "--forceflush", "-p", fmt.Sprint(port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := testnet.StartIn(ns.Path, cmd); err != nil {
		t.Fatalf("iperf3 server in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // our own child
		_ = cmd.Wait()
	})
	listening := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Server listening") {
				listening <- true
				break
			}
		}
		listening <- false
		_, _ = io.Copy(io.Discard, stdout) // keep the pipe drained
	}()
	select {
	case ok := <-listening:
		if !ok {
			t.Fatalf("iperf3 server in %s exited before listening", ns.Name)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("iperf3 server in %s did not start listening", ns.Name)
	}
}

// iperfClient runs a 3 s TCP test from ns and returns what the receiver
// got, in bits per second.
func iperfClient(ns *testnet.NS, server string, port int, reverse bool) (float64, error) {
	args := []string{"iperf3", "-c", server, "-p", fmt.Sprint(port), "-t", "3", "-J", "--connect-timeout", "5000"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := ns.Run(args...)
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, fmt.Errorf("iperf3 -J: %v: %s", err, out)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}
