package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// throughput is iperf3 TCP between two containers on Pier's bridge, and
// between two namespaces joined by a bare veth pair: the physical limit of
// this machine's kernel path, which a bridge can approach but not pass.
type throughput struct {
	bridgeBps, bareBridgeBps, vethBps float64
}

const iperfSeconds = "3"

func measureThroughput(sb *sandbox, pier impl, rep *report) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return err
	}
	net := &network{im: pier, name: "iperf", bridge: "bip", subnet: "10.80.0.0/24"}
	var ns [2]string
	for i := range ns {
		var err error
		if ns[i], err = sb.newContainer(); err != nil {
			return err
		}
		if err := sb.run(&call{im: pier, verb: "ADD", id: fmt.Sprintf("iperf-%d", i), netns: ns[i], ifName: "eth0", conf: net.conf()}); err != nil {
			return err
		}
	}
	bridgeBps, err := iperf(ns[0], ns[1], "10.80.0.2")
	if err != nil {
		return err
	}
	a, err := sb.newContainer()
	if err != nil {
		return err
	}
	b, err := sb.newContainer()
	if err != nil {
		return err
	}
	if err := bareVeth(a, b); err != nil {
		return err
	}
	vethBps, err := iperf(a, b, "10.81.0.1")
	if err != nil {
		return err
	}
	bareBridgeBps, err := bareBridgeIperf(sb)
	if err != nil {
		return err
	}
	rep.iperf = &throughput{bridgeBps: bridgeBps, bareBridgeBps: bareBridgeBps, vethBps: vethBps}
	return nil
}

// bareBridgeIperf builds by hand what a bridge plugin builds, with nothing
// else — no NAT table, no hairpin — in a namespace of its own, and measures
// it the same way: the yardstick for Pier's data path.
func bareBridgeIperf(sb *sandbox) (float64, error) {
	var ns [3]string // a "node" with a bridge and two containers
	for i := range ns {
		var err error
		if ns[i], err = sb.newContainer(); err != nil {
			return 0, err
		}
	}
	steps := [][]string{
		{ns[0], "ip", "link", "add", "br0", "type", "bridge"},
		{ns[0], "ip", "link", "set", "br0", "up"},
	}
	for i := 1; i <= 2; i++ {
		host, addr := fmt.Sprintf("vh%d", i), fmt.Sprintf("10.82.0.%d/24", i)
		steps = append(steps,
			[]string{ns[0], "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns[i]},
			[]string{ns[0], "ip", "link", "set", host, "master", "br0", "up"},
			[]string{ns[i], "ip", "addr", "add", addr, "dev", "eth0"},
			[]string{ns[i], "ip", "link", "set", "eth0", "up"})
	}
	for _, s := range steps {
		if _, err := inNS(s[0], s[1:]...); err != nil {
			return 0, err
		}
	}
	return iperf(ns[1], ns[2], "10.82.0.1")
}

// bareVeth joins two namespaces with a veth pair, 10.81.0.1 and .2.
func bareVeth(a, b string) error {
	steps := [][]string{
		{a, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b},
		{a, "ip", "addr", "add", "10.81.0.1/24", "dev", "va"},
		{a, "ip", "link", "set", "va", "up"},
		{b, "ip", "addr", "add", "10.81.0.2/24", "dev", "vb"},
		{b, "ip", "link", "set", "vb", "up"},
	}
	for _, s := range steps {
		if _, err := inNS(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// iperf runs an iperf3 server in serverNS (one test, then it exits) and a
// TCP client in clientNS, and returns the received bits per second.
func iperf(serverNS, clientNS, serverAddr string) (float64, error) {
	srv := exec.Command("iperf3", "-s", "-1", "-B", serverAddr)
	if err := testnet.StartIn(serverNS, srv); err != nil {
		return 0, err
	}
	defer stopServer(srv)
	var out string
	var err error
	for try := 0; try < 20; try++ { // the server needs a moment to listen
		if out, err = inNS(clientNS, "iperf3", "-c", serverAddr, "-t", iperfSeconds, "-J"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, fmt.Errorf("iperf3 -J: %w", err)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}

// stopServer waits for the one-off iperf3 server to exit after its test,
// and kills it (our own child) when it has not within serverExitWait: on a
// loaded machine a server sometimes stays in select after the client has
// its result, and without a client it would never exit.
func stopServer(srv *exec.Cmd) {
	done := make(chan struct{})
	go func() {
		_ = srv.Wait() // the exit status of a one-off server says nothing more
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(serverExitWait):
		_ = srv.Process.Kill()
		<-done
	}
}

// serverExitWait bounds stopServer's wait: a test is iperfSeconds long, and
// the server exits at once after it.
const serverExitWait = 5 * time.Second
