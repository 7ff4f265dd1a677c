package testnet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// privateRunEnv tells the re-executed program that it runs in the mount
// namespace PrivateRun made for it.
const privateRunEnv = "PIER_PRIVATE_RUN"

// PrivateRun gives a program that runs production binaries (the
// benchmarks: `pier` takes the node lock at its fixed path under
// /run/pier; iptables-legacy takes /run/xtables.lock) a /run of its own,
// so that it leaves no file in the machine's /run.
//
// Called first thing in main (or TestMain), it re-executes the program in
// a new mount namespace, waits for it and exits with its status; in the
// re-executed program it makes every mount private (nothing it mounts
// propagates to the machine), mounts an empty tmpfs on /run and returns
// nil. Everything the program starts inherits that /run; so do the
// network namespaces it names with `ip netns add`, which therefore vanish
// with the mount namespace even if the program is killed. A terminal's
// Ctrl-C reaches both processes (one process group): the child cleans up,
// the parent waits for it; a SIGTERM to the parent is passed on.
func PrivateRun() error {
	if os.Getenv(privateRunEnv) != "" {
		_ = os.Unsetenv(privateRunEnv) // only this process is the re-executed one
		return mountPrivateRun()
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), privateRunEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	signal.Ignore(os.Interrupt)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("re-execute in a private mount namespace: %w", err)
	}
	go func() {
		for s := range term {
			_ = cmd.Process.Signal(s) // it may have exited already
		}
	}()
	err := cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		os.Exit(exit.ExitCode())
	}
	fmt.Fprintln(os.Stderr, "private mount namespace:", err)
	os.Exit(1)
	return nil
}

// mountPrivateRun mounts the tmpfs, after checking that this process is
// not in its parent's mount namespace: run by hand with the variable set,
// it would otherwise hide the machine's /run.
func mountPrivateRun() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		return err
	}
	if self == parent {
		return fmt.Errorf("%s is set but this process shares its parent's mount namespace: refusing to mount over /run", privateRunEnv)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the mounts private: %w", err)
	}
	if err := unix.Mount("pier-private-run", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount a tmpfs on /run: %w", err)
	}
	return nil
}
