package sysctl

import (
	"os"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

func TestEnableForwarding(t *testing.T) {
	sb := testnet.New(t)
	hostV4 := readHostSysctl(t, "net/ipv4/ip_forward")
	hostV6 := readHostSysctl(t, "net/ipv6/conf/all/forwarding")
	sb.Node.MustRun(t, "sysctl", "-w", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
	sb.MustDo(t, func() error { return EnableForwarding(true, true) })
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if v := strings.TrimSpace(sb.Node.MustRun(t, "sysctl", "-n", k)); v != "1" {
			t.Fatalf("node %s = %s, want 1", k, v)
		}
	}
	sb.MustDo(t, func() error { return EnableForwarding(true, true) }) // already 1: no write
	if got := readHostSysctl(t, "net/ipv4/ip_forward"); got != hostV4 {
		t.Fatalf("host ip_forward changed from %s to %s", hostV4, got)
	}
	if got := readHostSysctl(t, "net/ipv6/conf/all/forwarding"); got != hostV6 {
		t.Fatalf("host ipv6 forwarding changed from %s to %s", hostV6, got)
	}
}

// readHostSysctl reads a sysctl of the test process's own (host) namespace.
// Only reads: tests never write the host's settings.
func readHostSysctl(t testing.TB, key string) string {
	t.Helper()
	out, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
