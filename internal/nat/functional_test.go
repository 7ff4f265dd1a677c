package nat

import (
	"net/netip"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
)

// natLab is the sandbox's NAT setup: a container and an "outside host", each
// joined to the node by a veth. The outside host has no route back to the
// container subnet, so a reply reaches the container only if the node
// masqueraded the request. All traffic stays between sandbox namespaces.
type natLab struct {
	node, ctr, outside *testnet.NS
}

func newNATLab(t *testing.T) natLab {
	t.Helper()
	sb := testnet.New(t)
	lab := natLab{node: sb.Node, ctr: sb.Container(), outside: testnet.NewNS(t, "pt-x-")}
	for _, cmd := range [][]string{
		// The veths are created inside the node and their peers moved to
		// the sandbox namespaces; the host's own links are never touched.
		{"ip", "link", "add", "to-ctr", "type", "veth", "peer", "name", "eth0", "netns", lab.ctr.Name},
		{"ip", "link", "add", "to-out", "type", "veth", "peer", "name", "eth0", "netns", lab.outside.Name},
		{"ip", "addr", "add", "10.99.0.1/24", "dev", "to-ctr"},
		{"ip", "addr", "add", "2001:db8:99::1/64", "dev", "to-ctr", "nodad"},
		{"ip", "addr", "add", "198.51.100.1/24", "dev", "to-out"},
		{"ip", "addr", "add", "2001:db8:51::1/64", "dev", "to-out", "nodad"},
		{"ip", "link", "set", "to-ctr", "up"},
		{"ip", "link", "set", "to-out", "up"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
	} {
		lab.node.MustRun(t, cmd...)
	}
	for _, cmd := range [][]string{
		{"ip", "addr", "add", "10.99.0.2/24", "dev", "eth0"},
		{"ip", "addr", "add", "2001:db8:99::2/64", "dev", "eth0", "nodad"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", "10.99.0.1"},
		{"ip", "-6", "route", "add", "default", "via", "2001:db8:99::1"},
	} {
		lab.ctr.MustRun(t, cmd...)
	}
	for _, cmd := range [][]string{
		// Connected routes only: nothing leads back to 10.99.0.0/24 or
		// 2001:db8:99::/64.
		{"ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"},
		{"ip", "addr", "add", "2001:db8:51::2/64", "dev", "eth0", "nodad"},
		{"ip", "link", "set", "eth0", "up"},
	} {
		lab.outside.MustRun(t, cmd...)
	}
	return lab
}

// ping reports whether the container gets an echo reply from dst. Every
// call is a new ping process, hence a new ICMP id and a new conntrack flow,
// so NAT is decided afresh by the ruleset of the moment.
func (l natLab) ping(dst string) bool {
	_, err := l.ctr.Run("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", dst)
	return err == nil
}

func TestMasqueradeFunctional(t *testing.T) {
	lab := newNATLab(t)
	fd := nodeFd(t, lab.node)
	n := Network{Name: "lab", Subnets: prefixes("10.99.0.0/24", "2001:db8:99::/64")}
	ctrAddrs := addrs("10.99.0.2", "2001:db8:99::2")
	const out4, out6 = "198.51.100.2", "2001:db8:51::2"

	// The node itself answers without NAT: proves the container side works.
	for _, dst := range []string{"198.51.100.1", "2001:db8:51::1"} {
		if !lab.ping(dst) {
			t.Fatalf("container cannot reach the node at %s: lab is broken", dst)
		}
	}
	for _, dst := range []string{out4, out6} {
		if lab.ping(dst) {
			t.Fatalf("%s answered without masquerade: the outside host must not route back", dst)
		}
	}

	if err := AddMasq(n, ctrAddrs, "lab-ctr/eth0", InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{out4, out6} {
		if !lab.ping(dst) {
			t.Errorf("%s unreachable after AddMasq: not masqueraded\n%s", dst,
				lab.node.MustRun(t, "nft", "list", "ruleset"))
		}
	}

	if err := DelMasq(n, ctrAddrs, InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{out4, out6} {
		if lab.ping(dst) {
			t.Errorf("%s still answers after DelMasq: still masqueraded", dst)
		}
	}
}

// TestMasqueradeExemptsOwnSubnet: traffic to the network's own subnets is
// not masqueraded. The lab first works as in TestMasqueradeFunctional; then
// AddMasq runs again with the outside host's subnet declared as the
// network's second subnet, which must replace the rule (not add one), so
// the request leaves unmasqueraded and the reply is lost.
func TestMasqueradeExemptsOwnSubnet(t *testing.T) {
	lab := newNATLab(t)
	fd := nodeFd(t, lab.node)
	n := Network{Name: "lab", Subnets: prefixes("10.99.0.0/24")}
	if err := AddMasq(n, addrs("10.99.0.2"), "lab-ctr/eth0", InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if !lab.ping("198.51.100.2") {
		t.Fatal("control: outside host unreachable with masquerade on")
	}
	n.Subnets = append(n.Subnets, netip.MustParsePrefix("198.51.100.0/24"))
	if err := AddMasq(n, addrs("10.99.0.2"), "lab-ctr/eth0", InNetNS(fd)); err != nil {
		t.Fatal(err)
	}
	if lab.ping("198.51.100.2") {
		t.Errorf("traffic to one of the network's own subnets was masqueraded\n%s",
			lab.node.MustRun(t, "nft", "list", "ruleset"))
	}
}
