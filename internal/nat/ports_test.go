package nat

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

const testGroup = 0x70696572

func webMappings(ip string, hostPorts ...uint16) []PortMapping {
	a := netip.MustParseAddr(ip)
	subnet := netip.MustParsePrefix("10.15.20.0/24")
	if a.Is6() {
		subnet = netip.MustParsePrefix("2001:db8:15::/64")
	}
	var out []PortMapping
	for _, p := range hostPorts {
		out = append(out, PortMapping{Protocol: "tcp", HostPort: p, ContainerIP: a, ContainerPort: 80, Subnet: subnet})
	}
	return out
}

func TestPrefixRange(t *testing.T) {
	for _, tc := range []struct{ p, first, last string }{
		{"10.15.20.7/24", "10.15.20.0", "10.15.20.255"},
		{"127.0.0.0/8", "127.0.0.0", "127.255.255.255"},
		{"10.0.0.1/32", "10.0.0.1", "10.0.0.1"},
		{"2001:db8::/61", "2001:db8::", "2001:db8:0:7:ffff:ffff:ffff:ffff"},
	} {
		first, last := prefixRange(netip.MustParsePrefix(tc.p))
		if first.String() != tc.first || last.String() != tc.last {
			t.Errorf("%s: %s-%s, want %s-%s", tc.p, first, last, tc.first, tc.last)
		}
	}
}

func TestPortMappingValidation(t *testing.T) {
	good := webMappings("10.15.20.2", 8080)[0]
	for _, bad := range []func(m *PortMapping){
		func(m *PortMapping) { m.Protocol = "icmp" },
		func(m *PortMapping) { m.HostPort = 0 },
		func(m *PortMapping) { m.ContainerIP = netip.Addr{} },
		func(m *PortMapping) { m.HostIP = netip.MustParseAddr("2001:db8::1") },
		func(m *PortMapping) { m.Subnet = netip.MustParsePrefix("10.99.0.0/16") },
	} {
		m := good
		bad(&m)
		if err := m.validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", m, err)
		}
	}
	if err := good.validate(); err != nil {
		t.Error(err)
	}
}

// TestAddPorts: host port, hairpin and MAC check elements, decoded back by
// ListNodeElements; a repeated Add changes nothing; a taken port is
// refused atomically, naming its holder; DelOwned removes one owner's
// elements only.
func TestAddPorts(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	mac, _ := net.ParseMAC("02:00:00:00:00:02")
	web := Attachment{Network: bridgeNet, Owner: "web/eth0", Masq: addrs("10.15.20.2"), Bridge: "br0", GuardGroup: testGroup,
		Ports: append(webMappings("10.15.20.2", 8080), PortMapping{Protocol: "udp", HostPort: 53, HostIP: netip.MustParseAddr("198.51.100.1"),
			ContainerIP: netip.MustParseAddr("10.15.20.2"), ContainerPort: 5353, Subnet: netip.MustParsePrefix("10.15.20.0/24")}),
		Spoof: &SpoofCheck{Port: "vethweb", MAC: mac}}
	for range 2 {
		if _, err := Add(web, InNetNS(fd)); err != nil {
			t.Fatal(err)
		}
	}
	other := Attachment{Network: otherNet, Owner: "api/eth0", GuardGroup: testGroup, Ports: []PortMapping{{Protocol: "tcp", HostPort: 9090,
		ContainerIP: netip.MustParseAddr("2001:db8:15::3"), ContainerPort: 90, Subnet: netip.MustParsePrefix("2001:db8:15::/64")}}}
	if _, err := Add(other, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	got, err := ListNodeElements(InNetNS(fd))
	if err != nil {
		t.Fatal(err)
	}
	webOwner := NodeOwner(bridgeNet.Name, "web/eth0")
	mine := got.Owned(webOwner)
	var ports []string
	for _, p := range mine.Ports {
		ports = append(ports, p.String())
	}
	slices.Sort(ports)
	if want := []string{"tcp *:8080 -> 10.15.20.2:80", "udp 198.51.100.1:53 -> 10.15.20.2:5353"}; !slices.Equal(ports, want) {
		t.Errorf("ports of web: %v, want %v", ports, want)
	}
	if len(mine.Hairpin) != 4 || len(mine.Spoof) != 2 || got.Len() != mine.Len()+2 {
		t.Errorf("elements: %+v", got)
	}
	ruleset := node.MustRun(t, "nft", "list", "ruleset")
	for _, want := range []string{
		`"vethweb" . 02:00:00:00:00:02 comment "mybridge/web/eth0"`,
		`10.15.20.2 . tcp . 80 . 127.0.0.0/8 comment "mybridge/web/eth0"`,
		`2001:db8:15::3 . tcp . 90 . 2001:db8:15::/64 comment "other/api/eth0"`,
		`iifgroup 1885955442 icmpv6 type nd-router-advert drop`,
		`elements = { "br0" comment "bridge" }`,
	} {
		if !strings.Contains(ruleset, want) {
			t.Errorf("ruleset lacks %s:\n%s", want, ruleset)
		}
	}

	// tcp/8080 again for another container: refused, nothing added.
	thief := Attachment{Network: bridgeNet, Owner: "thief/eth0", Masq: addrs("10.15.20.9"), GuardGroup: testGroup, Ports: webMappings("10.15.20.9", 8081, 8080)}
	_, err = Add(thief, InNetNS(fd))
	if !errors.Is(err, ErrPortConflict) || !strings.Contains(err.Error(), "tcp/8080 is mapped to 10.15.20.2:80 by mybridge/web/eth0") {
		t.Fatalf("conflict: %v", err)
	}
	if after, _ := ListNodeElements(InNetNS(fd)); after.Len() != got.Len() || strings.Contains(node.MustRun(t, "nft", "list", "ruleset"), "10.15.20.9") {
		t.Errorf("a refused Add left elements: %+v", after)
	}

	if err := DelOwned(bridgeNet.Name, "web/eth0", InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if err := DelOwned(bridgeNet.Name, "web/eth0", InNetNS(fd)); err != nil {
		t.Fatal("DelOwned again:", err)
	}
	after, err := ListNodeElements(InNetNS(fd))
	if err != nil || after.Len() != 2 || after.Owned(NodeOwner(otherNet.Name, "api/eth0")).Len() != 2 {
		t.Errorf("after DelOwned: %+v %v", after, err)
	}
	// Now the thief may have the port.
	if _, err := Add(thief, InNetNS(fd)); err != nil {
		t.Errorf("port freed by DelOwned still taken: %v", err)
	}
}

// TestNodeObjectsComeBack: after the tables are deleted (a flushed
// ruleset), the next Add's fast batch fails and the slow path sets up
// both tables again, with the RA guard.
func TestNodeObjectsComeBack(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	a := Attachment{Network: bridgeNet, Owner: "x/eth0", GuardGroup: testGroup, Bridge: "br0", Ports: webMappings("10.15.20.2", 8080)}
	if _, err := Add(a, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	node.MustRun(t, "nft", "flush", "ruleset")
	if _, err := Add(a, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if rs := node.MustRun(t, "nft", "list", "ruleset"); !strings.Contains(rs, "nd-router-advert") || !strings.Contains(rs, "tcp . 8080") {
		t.Errorf("after a flush, Add did not restore the tables:\n%s", rs)
	}
}

// TestConcurrentPortClaims: of several containers claiming one host port
// at once, exactly one gets it, whatever the order, on a fresh node.
func TestConcurrentPortClaims(t *testing.T) {
	node := testnet.New(t).Node
	fd := nodeFd(t, node)
	const n = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := netip.AddrFrom4([4]byte{10, 15, 20, byte(10 + i)}).String()
			_, errs[i] = Add(Attachment{Network: bridgeNet, Owner: ip + "/eth0", Masq: addrs(ip), GuardGroup: testGroup, Ports: webMappings(ip, 8080)}, InNetNS(fd))
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrPortConflict):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d containers got tcp/8080: %v", won, errs)
	}
}
