package nodestate

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/pier-cni/pier/internal/localnet"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/testnet"
)

// TestLocalnetLifecycle: VerifyLocalnet guards a bridge whose
// route_localnet an older Pier turned on without the guard; ReleaseLocalnet
// keeps both while a host port leads behind the bridge, and removes both
// when none does (a host port of another bridge does not count);
// EnableLocalnet brings both back.
func TestLocalnetLifecycle(t *testing.T) {
	node := testnet.New(t).Node
	lock := filepath.Join(t.TempDir(), "node.lock")
	for _, br := range []string{"pt-br1", "pt-br2"} {
		node.MustRun(t, "ip", "link", "add", br, "type", "bridge")
		node.MustRun(t, "ip", "link", "set", br, "up")
	}
	node.MustRun(t, "ip", "addr", "add", "10.61.0.1/24", "dev", "pt-br1")
	node.MustRun(t, "ip", "addr", "add", "10.62.0.1/24", "dev", "pt-br2")
	node.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.pt-br1.route_localnet=1") // as an older Pier left it
	state := func() (on, guarded bool) {
		t.Helper()
		if err := node.Do(func() (err error) {
			if on, err = localnet.Enabled("pt-br1"); err == nil {
				guarded, err = localnet.Present("pt-br1")
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return on, guarded
	}
	do := func(f func() error) {
		t.Helper()
		if err := node.Do(f); err != nil {
			t.Fatal(err)
		}
	}
	var fixed bool
	do(func() (err error) { fixed, err = VerifyLocalnet(lock, "pt-br1"); return err })
	if on, guarded := state(); !fixed || !on || !guarded {
		t.Fatalf("after VerifyLocalnet on an unguarded bridge: fixed %v, route_localnet %v, guard %v", fixed, on, guarded)
	}
	port := func(ip, owner string, hostPort uint16) nat.Attachment {
		a := netip.MustParseAddr(ip)
		return nat.Attachment{Network: nat.Network{Name: "n"}, Owner: owner, Ports: []nat.PortMapping{{Protocol: "tcp", HostPort: hostPort,
			ContainerIP: a, ContainerPort: 80, Subnet: netip.PrefixFrom(a, 24).Masked()}}}
	}
	behind, elsewhere := port("10.61.0.2", "c1/eth0", 8080), port("10.62.0.2", "c2/eth0", 8081)
	do(func() error {
		for _, a := range []nat.Attachment{behind, elsewhere} {
			if _, err := nat.Add(a); err != nil {
				return err
			}
		}
		return nil
	})
	var off bool
	do(func() (err error) { off, err = ReleaseLocalnet(lock, "pt-br1"); return err })
	if on, guarded := state(); off || !on || !guarded {
		t.Fatalf("with a host port behind the bridge, ReleaseLocalnet turned it off (%v): route_localnet %v, guard %v", off, on, guarded)
	}
	do(func() error { return nat.DelOwned("n", "c1/eth0") })
	do(func() (err error) { off, err = ReleaseLocalnet(lock, "pt-br1"); return err })
	if on, guarded := state(); !off || on || guarded {
		t.Fatalf("with no host port behind the bridge (one behind another): released %v, route_localnet %v, guard %v", off, on, guarded)
	}
	do(func() error { return EnableLocalnet(lock, "pt-br1") })
	if on, guarded := state(); !on || !guarded {
		t.Fatalf("after EnableLocalnet: route_localnet %v, guard %v", on, guarded)
	}
}

// BenchmarkEnableLocalnet is what an ADD with an IPv4 host port pays for
// route_localnet when it is on already: a read of the sysctl.
func BenchmarkEnableLocalnet(b *testing.B) {
	node := testnet.New(b).Node
	lock := filepath.Join(b.TempDir(), "node.lock")
	node.MustRun(b, "ip", "link", "add", "pt-br1", "type", "bridge")
	if err := node.Do(func() error {
		if err := EnableLocalnet(lock, "pt-br1"); err != nil {
			return err
		}
		for b.Loop() {
			if err := EnableLocalnet(lock, "pt-br1"); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReleaseLocalnet is what a DEL with host ports pays when another
// host port still leads behind the bridge: the sysctl, the node's lock,
// the host port maps and the bridge's routes read.
func BenchmarkReleaseLocalnet(b *testing.B) {
	node := testnet.New(b).Node
	lock := filepath.Join(b.TempDir(), "node.lock")
	node.MustRun(b, "ip", "link", "add", "pt-br1", "type", "bridge")
	node.MustRun(b, "ip", "link", "set", "pt-br1", "up")
	node.MustRun(b, "ip", "addr", "add", "10.61.0.1/24", "dev", "pt-br1")
	a := netip.MustParseAddr("10.61.0.2")
	att := nat.Attachment{Network: nat.Network{Name: "n"}, Owner: "c1/eth0", Ports: []nat.PortMapping{{Protocol: "tcp", HostPort: 8080,
		ContainerIP: a, ContainerPort: 80, Subnet: netip.MustParsePrefix("10.61.0.0/24")}}}
	if err := node.Do(func() error {
		if _, err := nat.Add(att); err != nil {
			return err
		}
		if err := EnableLocalnet(lock, "pt-br1"); err != nil {
			return err
		}
		for b.Loop() {
			if off, err := ReleaseLocalnet(lock, "pt-br1"); err != nil || off {
				return fmt.Errorf("released %v: %v", off, err)
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}
