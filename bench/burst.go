package main

import (
	"fmt"
	"sync"
	"time"
)

// burstSample is one burst: size ADDs started at once on an empty network.
type burstSample struct {
	size     int
	impl     string
	wall     time.Duration
	waits    []time.Duration // each ADD's own wall time
	failures int
	delWall  time.Duration
}

// measureBurst starts size ADDs at once for each implementation (a node
// starting many pods), then size DELs at once. The network is warm — its
// bridge and NAT objects exist from an earlier container, as on a node that
// has run pods — but that container is gone, so pier's burst starts on a
// bridge without its node-side setup (host filters, marker), which its
// last DEL removed: one ADD of the burst sets it up while the others wait
// for it.
func measureBurst(sb *sandbox, impls []impl, size int, rep *report) error {
	for i, im := range impls {
		net := &network{im: im, masq: true, name: fmt.Sprintf("burst-%s", im.name),
			bridge: fmt.Sprintf("bu%d", i), subnet: fmt.Sprintf("10.%d.0.0/16", 70+i)}
		if err := measureOne(sb, net, "burst-warmup", &latencySample{}); err != nil {
			return err
		}
		paths := make([]string, size)
		for k := range paths {
			var err error
			if paths[k], err = sb.newContainer(); err != nil {
				return err
			}
		}
		s := burstSample{size: size, impl: im.name}
		var adds []*call
		s.wall, adds = runAtOnce(sb, net, "ADD", paths)
		for _, c := range adds {
			if c.elapsed < 0 {
				s.failures++
			} else {
				s.waits = append(s.waits, c.elapsed)
			}
		}
		s.delWall, _ = runAtOnce(sb, net, "DEL", paths)
		for _, p := range paths {
			if err := sb.dropContainer(p); err != nil {
				return err
			}
		}
		fmt.Printf("burst of %d %s ADDs: %s wall, %d failures\n", size, im.name, ms(s.wall), s.failures)
		rep.bursts = append(rep.bursts, s)
	}
	return nil
}

// runAtOnce starts one call per container at the same moment and waits for
// all; a failed call has elapsed -1.
func runAtOnce(sb *sandbox, net *network, verb string, paths []string) (time.Duration, []*call) {
	calls := make([]*call, len(paths))
	var wg sync.WaitGroup
	start := time.Now()
	for k, p := range paths {
		calls[k] = &call{im: net.im, verb: verb, id: fmt.Sprintf("burst-%d", k), netns: p, ifName: "eth0", conf: net.conf()}
		wg.Add(1)
		go func(c *call) {
			defer wg.Done()
			if err := sb.run(c); err != nil {
				c.elapsed = -1
			}
		}(calls[k])
	}
	wg.Wait()
	return time.Since(start), calls
}
