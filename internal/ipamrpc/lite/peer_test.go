package lite_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/ipamrpc/lite"
)

// listenEnv makes the test binary a socket server (see TestMain) that
// listens at the path in the variable, counts what clients send, and
// prints the count when its stdin closes.
const listenEnv = "LITE_TEST_LISTEN"

func TestMain(m *testing.M) {
	if path := os.Getenv(listenEnv); path != "" {
		os.Exit(listenAndCount(path))
	}
	os.Exit(m.Run())
}

func listenAndCount(path string) int {
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var received atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(io.Discard, c) // until the client closes
				received.Add(n)
			}()
		}
	}()
	fmt.Println("listening")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it
	fmt.Println(received.Load())
	return 0
}

// TestRefusesSocketOfAnotherUser guards the plugin against a socket at
// daemonSocket that some other user serves (it could hand out addresses in
// use, and would learn every container's network and id): the client sends
// nothing to it and fails with code 5, naming the uid.
func TestRefusesSocketOfAnotherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a server as another uid")
	}
	base, err := os.MkdirTemp("", "lite-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	run := filepath.Join(base, "run")
	if err := errors.Join(os.Chmod(base, 0o755), os.Mkdir(run, 0o755), os.Chown(run, 65534, 65534)); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "server")
	copyExecutable(t, bin)
	socket := filepath.Join(run, "pierd.sock")
	cmd := exec.Command(bin)
	cmd.Env = []string{listenEnv + "=" + socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) // a no-op once it has exited
	out := bufio.NewReader(stdout)
	if line, err := out.ReadString('\n'); err != nil || line != "listening\n" {
		t.Fatalf("server: %q %v", line, err)
	}

	conf := loadConf(t, socket, `"subnet":"10.1.0.0/24"`, "")
	c := lite.New(socket)
	c.Warm()
	_, err = c.Allocate(context.Background(), conf, own("c1"))
	if cnierr.CodeOf(err) != cnierr.IOFailure || !strings.Contains(err.Error(), "served by uid 65534") {
		t.Errorf("ADD against another user's socket: %v (code %d), want code 5 naming uid 65534", err, cnierr.CodeOf(err))
	}
	if _, err := c.Release(context.Background(), conf, own("c1")); cnierr.CodeOf(err) != cnierr.IOFailure {
		t.Errorf("DEL against another user's socket: %v, want code 5", err)
	}
	c.Close()
	_ = stdin.Close()
	if line, err := out.ReadString('\n'); err != nil || line != "0\n" {
		t.Errorf("the other user's server received %q bytes (%v), want 0", strings.TrimSpace(line), err)
	}
}

func copyExecutable(t *testing.T, dst string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
