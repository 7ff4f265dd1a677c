package testnet

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"
)

// Start starts bin inside the node namespace, with env added to a minimal
// environment (as ExecIn) and stdin as its input, and returns at once. Its
// stdout and stderr are collected in *bytes.Buffer values (cmd.Stdout,
// cmd.Stderr); the caller Waits for it, or Kills it first, and may turn the
// outcome into a PluginRun with Outcome.
//
// Why not `ip netns exec`: that runs ip, which opens the namespace, unshares
// a mount namespace, remounts /sys and only then execs the plugin — 1–2 ms
// of work of its own, during which a kill hits ip rather than the plugin. A
// test that kills the plugin at a random moment of its run needs the child
// to be the plugin from its first instruction.
func (s *Sandbox) Start(bin string, env []string, stdin []byte) (*exec.Cmd, error) {
	cmd := exec.Command(bin)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = new(bytes.Buffer), new(bytes.Buffer)
	if err := StartIn(s.Node.Path, cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// StartIn calls cmd.Start on an OS thread switched into the network
// namespace at nsPath, so the child is born in it: fork copies the forking
// thread's namespaces, and Go forks from the calling thread. The test
// process itself never leaves its own namespace: the switch happens on a
// locked thread of a goroutine of its own, which switches back after the
// fork. If switching back fails, the thread stays locked, so it exits with
// the goroutine instead of returning to the scheduler in the wrong namespace.
func StartIn(nsPath string, cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := startOnThread(nsPath, cmd)
		if restored {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// startOnThread runs on a locked thread; restored reports whether that
// thread is (back) in its original namespace.
func startOnThread(nsPath string, cmd *exec.Cmd) (restored bool, err error) {
	orig, err := netns.Get()
	if err != nil {
		return true, fmt.Errorf("open the current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return true, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		// A failed setns(2) leaves the thread where it was.
		return true, fmt.Errorf("enter network namespace %s: %w", nsPath, err)
	}
	startErr := cmd.Start()
	if err := netns.Set(orig); err != nil {
		return false, errors.Join(startErr, fmt.Errorf("return from network namespace %s: %w", nsPath, err))
	}
	return true, startErr
}

// Outcome turns a started command's Wait error into a PluginRun: its exit
// code (-1 when it was killed by a signal, as ProcessState reports) and what
// it wrote, when Start collected it.
func Outcome(cmd *exec.Cmd, waitErr error) PluginRun {
	var r PluginRun
	if b, ok := cmd.Stdout.(*bytes.Buffer); ok {
		r.Stdout = b.String()
	}
	if b, ok := cmd.Stderr.(*bytes.Buffer); ok {
		r.Stderr = b.String()
	}
	var ee *exec.ExitError
	switch {
	case waitErr == nil:
	case errors.As(waitErr, &ee):
		r.ExitCode = ee.ExitCode()
	default:
		r.ExitCode = -1
		r.Stderr += fmt.Sprintf("wait: %v", waitErr)
	}
	return r
}
