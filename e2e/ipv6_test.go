package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/veth"
)

// raConf is a gateway network with an IPv4 and an IPv6 range and
// no masquerade: its ADDs do no nftables work but for the RA guard the
// bridge's creator installs.
func raConf(dataDir string) string {
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "v6net", "type": "pier", "bridge": "pier-v6",
  "isGateway": true, "isDefaultGateway": true,
  "ipam": {"type": "pier-ipam", "dataDir": %q,
           "ranges": [[{"subnet": "10.35.0.0/24"}], [{"subnet": "fd00:35::/64"}]]}}`, dataDir)
}

// TestIPv6Hardening: IPv6 forwarding on in the node, accept_ra=0 on the
// bridge and the host veths, DAD off in the container; a router
// advertisement sent from a container changes neither the node's routes
// and addresses nor a neighbour's — and the same advertisement, with the
// RA guard removed, does change the neighbour's: the test's RA is one a
// host accepts.
func TestIPv6Hardening(t *testing.T) {
	n := newNode(t)
	conf := raConf(n.dataDir)
	rogue, victim := n.container("rogue"), n.container("victim")
	n.mustAdd(rogue, conf)
	n.mustAdd(victim, conf)

	for _, s := range []struct {
		ns         *testnet.NS
		key, value string
	}{
		{n.sb.Node, "net.ipv6.conf.all.forwarding", "1"},
		{n.sb.Node, "net.ipv6.conf.pier-v6.accept_ra", "0"},
		{n.sb.Node, "net.ipv6.conf." + veth.HostName("victim", "eth0") + ".accept_ra", "0"},
		{n.sb.Node, "net.ipv6.conf." + veth.HostName("victim", "eth0") + ".disable_ipv6", "1"},
		{victim.ns, "net.ipv6.conf.eth0.accept_dad", "0"},
	} {
		if got := strings.TrimSpace(s.ns.MustRun(t, "sysctl", "-n", s.key)); got != s.value {
			t.Errorf("%s in %s = %s, want %s", s.key, s.ns.Name, got, s.value)
		}
	}
	port := ipJSON[[]struct {
		Group string `json:"group"`
	}](t, n.sb.Node, "link", "show", "dev", veth.HostName("victim", "eth0"))
	if len(port) != 1 || port[0].Group != fmt.Sprint(veth.PortGroup) {
		t.Errorf("host veth group %+v, want %d (the RA guard's)", port, veth.PortGroup)
	}

	before := map[*testnet.NS]string{n.sb.Node: ipv6State(t, n.sb.Node), victim.ns: ipv6State(t, victim.ns)}
	sendRA(t, rogue.ns, "eth0", netip.MustParsePrefix("2001:db8:bad::/64"))
	// The RA went out before this ping; once its reply is back, the RA has
	// arrived wherever the bridge let it go.
	rogue.ns.MustRun(t, "ping", "-6", "-c1", "-W2", "fd00:35::3")
	rogue.ns.MustRun(t, "ping", "-6", "-c1", "-W2", "fd00:35::1")
	for ns, want := range before {
		if got := ipv6State(t, ns); got != want {
			t.Errorf("a container's router advertisement changed %s:\nbefore:\n%s\nafter:\n%s", ns.Name, want, got)
		}
	}

	// Without the guard the neighbour takes the prefix: the RA is valid.
	n.sb.Node.MustRun(t, "nft", "flush", "chain", "bridge", "pier", "prerouting")
	sendRA(t, rogue.ns, "eth0", netip.MustParsePrefix("2001:db8:bad::/64"))
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(ipv6State(t, victim.ns), "2001:db8:bad::/64") {
		if time.Now().After(deadline) {
			t.Fatalf("the unguarded neighbour ignored the RA too: the test's RA proves nothing\n%s", ipv6State(t, victim.ns))
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.mustDel(rogue, conf)
	n.mustDel(victim, conf)
}

// ipv6State is a namespace's IPv6 routes and global addresses, which a
// rogue RA would change.
func ipv6State(t *testing.T, ns *testnet.NS) string {
	t.Helper()
	routes := ns.MustRun(t, "ip", "-6", "route", "show")
	addrs := ns.MustRun(t, "ip", "-6", "-o", "addr", "show", "scope", "global")
	var lines []string
	for _, l := range strings.Split(addrs, "\n") {
		if f := strings.Fields(l); len(f) >= 4 {
			lines = append(lines, f[1]+" "+f[3]) // interface and address, without lifetimes
		}
	}
	return routes + strings.Join(lines, "\n")
}

// sendRA sends a router advertisement from ifName in ns to all nodes:
// router lifetime 1800 s and an on-link, autonomous prefix, what a host
// with accept_ra=1 turns into a default route and an address.
func sendRA(t *testing.T, ns *testnet.NS, ifName string, prefix netip.Prefix) {
	t.Helper()
	msg := make([]byte, 16+32)
	msg[0] = 134                              // router advertisement; the kernel fills the checksum
	msg[4] = 64                               // current hop limit
	binary.BigEndian.PutUint16(msg[6:], 1800) // router lifetime
	opt := msg[16:]
	opt[0], opt[1] = 3, 4 // prefix information, 4×8 bytes
	opt[2] = byte(prefix.Bits())
	opt[3] = 0xc0 // on-link, autonomous
	binary.BigEndian.PutUint32(opt[4:], 86400)
	binary.BigEndian.PutUint32(opt[8:], 14400)
	copy(opt[16:], prefix.Addr().AsSlice())
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// Neighbour discovery is only accepted with hop limit 255.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index); err != nil {
			return err
		}
		to := &unix.SockaddrInet6{Addr: [16]byte{0xff, 0x02, 15: 1}, ZoneId: uint32(ifi.Index)}
		return unix.Sendto(fd, msg, 0, to)
	})
	if err != nil {
		t.Fatalf("send RA from %s: %v", ns.Name, err)
	}
}
