package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// The -chain mode compares one ADD (and DEL) of a container with two port
// mappings and a bandwidth limit: Pier does it in one process; the
// reference needs the chain bridge (+ host-local) → portmap → bandwidth,
// each plugin a process of its own, each after the previous one with its
// result as prevResult, as a runtime runs a conflist. DEL runs the chain in
// reverse. Pier without the features runs alongside as the baseline.
// Each implementation has its own bridge, subnet and host ports; runs are
// interleaved as in the main benchmark.

// chainStep is one plugin of a chain and the config it is given, without
// prevResult.
type chainStep struct {
	bin  string
	conf map[string]any
}

type chainImpl struct {
	name    string
	cniPath string
	steps   []chainStep
}

const chainBandwidth = `{"ingressRate": 10000000, "ingressBurst": 262144, "egressRate": 10000000, "egressBurst": 262144}`

func chainImpls(o options, dataDir string) ([]chainImpl, error) {
	binDir, err := filepath.Abs(o.binDir)
	if err != nil {
		return nil, err
	}
	// One TCP and one UDP port, as a web server with a DNS side.
	ports := func(first int) string {
		return fmt.Sprintf(`[{"hostPort": %d, "containerPort": 80, "protocol": "tcp"}, {"hostPort": %d, "containerPort": 53, "protocol": "udp"}]`, first, first+1)
	}
	pierConf := func(network, bridge, subnet, runtime string) map[string]any {
		return mustJSON(fmt.Sprintf(`{"cniVersion": "0.4.0", "name": %q, "type": "pier", "bridge": %q, "isGateway": true, "ipMasq": true,
			"runtimeConfig": %s, "ipam": {"type": "pier-ipam", "subnet": %q, "dataDir": %q}}`, network, bridge, runtime, subnet, dataDir))
	}
	pier := filepath.Join(binDir, "pier")
	ref := func(plugin string) string { return filepath.Join(o.refDir, plugin) }
	return []chainImpl{
		{"pier, ports + bandwidth", binDir, []chainStep{{pier, pierConf("ch-pier", "cb0", "10.80.0.0/16",
			`{"portMappings": `+ports(8080)+`, "bandwidth": `+chainBandwidth+`}`)}}},
		// Without a UDP port: no conntrack dump (see nat.ForgetUDPFlows).
		{"pier, 2 TCP ports + bw", binDir, []chainStep{{pier, pierConf("ch-tcp", "cb3", "10.83.0.0/16",
			`{"portMappings": `+strings.Replace(ports(7080), `"udp"`, `"tcp"`, 1)+`, "bandwidth": `+chainBandwidth+`}`)}}},
		{"pier, neither (baseline)", binDir, []chainStep{{pier, pierConf("ch-plain", "cb1", "10.81.0.0/16", `{}`)}}},
		{"reference chain", o.refDir, []chainStep{
			{ref("bridge"), mustJSON(fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "ch-ref", "type": "bridge", "bridge": "cb2", "isGateway": true, "ipMasq": true,
				"ipam": {"type": "host-local", "subnet": "10.82.0.0/16", "dataDir": %q}}`, dataDir))},
			{ref("portmap"), mustJSON(`{"cniVersion": "0.4.0", "name": "ch-ref", "type": "portmap", "snat": true, "runtimeConfig": {"portMappings": ` + ports(9080) + `}}`)},
			{ref("bandwidth"), mustJSON(`{"cniVersion": "0.4.0", "name": "ch-ref", "type": "bandwidth", "runtimeConfig": {"bandwidth": ` + chainBandwidth + `}}`)},
		}},
	}, nil
}

func mustJSON(s string) map[string]any {
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		panic(fmt.Sprintf("bench: bad built-in config: %v\n%s", err, s))
	}
	return m
}

// runChain is the -chain mode.
func runChain(o options) error {
	sb, err := newSandbox()
	if err != nil {
		return err
	}
	defer sb.close()
	impls, err := chainImpls(o, sb.dataDir)
	if err != nil {
		return err
	}
	fmt.Println(describeMachine(o.refDir).String())
	adds := map[string][]time.Duration{}
	dels := map[string][]time.Duration{}
	for r := range o.runs + 1 { // run 0 warms up: bridges and NAT objects exist afterwards
		for i := range impls {
			im := impls[(i+r)%len(impls)]
			add, del, err := sb.chainOnce(im, fmt.Sprintf("ch%d", r))
			if err != nil {
				return err
			}
			if r > 0 {
				adds[im.name] = append(adds[im.name], add)
				dels[im.name] = append(dels[im.name], del)
			}
		}
	}
	fmt.Printf("\nADD and DEL with two port mappings and a 10 Mbit/s limit each way (%d runs, median / p90; a chain's time is the sum of its processes)\n", o.runs)
	ref := median(adds["reference chain"])
	for _, im := range impls {
		fmt.Printf("%-26s ADD %8s / %8s   DEL %8s / %8s   ADD vs reference chain %.2f×\n", im.name,
			ms(median(adds[im.name])), ms(p90(adds[im.name])), ms(median(dels[im.name])), ms(p90(dels[im.name])),
			float64(median(adds[im.name]))/float64(ref))
	}
	return nil
}

// chainOnce attaches a fresh container through the chain and removes it,
// returning the summed wall times of the ADD and DEL processes.
func (sb *sandbox) chainOnce(im chainImpl, id string) (add, del time.Duration, err error) {
	nsPath, err := sb.newContainer()
	if err != nil {
		return 0, 0, err
	}
	var prev json.RawMessage
	for _, st := range im.steps {
		c, err := sb.chainCall(im, st, "ADD", id, nsPath, prev)
		if err != nil {
			return 0, 0, err
		}
		add += c.elapsed
		prev = json.RawMessage(c.out)
	}
	for i := len(im.steps) - 1; i >= 0; i-- {
		c, err := sb.chainCall(im, im.steps[i], "DEL", id, nsPath, prev)
		if err != nil {
			return 0, 0, err
		}
		del += c.elapsed
	}
	return add, del, sb.dropContainer(nsPath)
}

type chainResult struct {
	elapsed time.Duration
	out     string
}

func (sb *sandbox) chainCall(im chainImpl, st chainStep, verb, id, nsPath string, prev json.RawMessage) (chainResult, error) {
	conf := map[string]any{}
	for k, v := range st.conf {
		conf[k] = v
	}
	if prev != nil {
		conf["prevResult"] = prev
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return chainResult{}, err
	}
	cmd := exec.Command(st.bin)
	cmd.Env = []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + nsPath,
		"CNI_IFNAME=eth0", "CNI_PATH=" + im.cniPath, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = bytes.NewReader(b)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := testnet.StartIn(sb.nodeNS, cmd); err != nil {
		return chainResult{}, err
	}
	err = cmd.Wait()
	elapsed := time.Since(start)
	if err != nil {
		return chainResult{}, fmt.Errorf("%s %s %s (%s): %v: %s %s", im.name, verb, id, filepath.Base(st.bin), err, stdout.String(), stderr.String())
	}
	return chainResult{elapsed: elapsed, out: stdout.String()}, nil
}
