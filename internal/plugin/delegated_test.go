package plugin

import (
	"fmt"
	"os"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nodestate"
	"github.com/pier-cni/pier/internal/veth"
)

// TestDelegatedIPAM: another IPAM plugin (the reference host-local, which
// speaks spec 1.0.0) serves ADD and DEL through CNI_PATH. It cannot say
// what an attachment holds, so DEL removes the masquerade elements whose
// comments name the attachment; a delegated ADD that fails leaves nothing.
// Pier's records go to the network's "stateDir", not the host's default.
func TestDelegatedIPAM(t *testing.T) {
	const cniPath = "/usr/lib/cni"
	if _, err := os.Stat(cniPath + "/host-local"); err != nil {
		t.Skip("needs the reference plugins (Debian package containernetworking-plugins)")
	}
	n := inNode(t)
	if n == nil {
		return
	}
	t.Setenv("CNI_PATH", cniPath)
	hlDir, stateDir := t.TempDir(), t.TempDir()
	conf := func(extra string) []byte {
		return fmt.Appendf(nil, `{"cniVersion":"1.0.0","name":"hlnet","type":"pier","bridge":"pt-br8","isGateway":true,"ipMasq":true,%s
			"stateDir":%q,"ipam":{"type":"host-local","subnet":"10.40.0.0/24","dataDir":%q}}`, extra, stateDir, hlDir)
	}
	// A delegated plugin reads the CNI_* variables of the call, as the
	// runtime set them for pier.
	run := func(verb string, a attachment, stdin []byte) error {
		netns := ""
		if a.ns != nil {
			netns = a.ns.Path
		}
		t.Setenv("CNI_COMMAND", verb)
		t.Setenv("CNI_CONTAINERID", a.id)
		t.Setenv("CNI_NETNS", netns)
		t.Setenv("CNI_IFNAME", a.ifName)
		_, _, err := n.plugin.run(verb, a.args(stdin, netns), verbs[verb])
		return err
	}
	c := netConf{name: "hlnet", subnet: "10.40.0.0/24"} // for state(): pier-ipam holds nothing here
	a, b := n.container("hl-a"), n.container("hl-b")
	for _, x := range []attachment{a, b} {
		if err := run("ADD", x, conf("")); err != nil {
			t.Fatalf("ADD %s: %v", x.id, err)
		}
		if s := n.state(x, c); !s.hostVeth || len(s.masq) != 1 {
			t.Fatalf("after ADD of %s: %+v", x.id, s)
		}
	}
	if recs, errs := nodestate.Records(stateDir, "hlnet"); len(recs) != 2 || len(errs) != 0 {
		t.Errorf("records under stateDir after two ADDs: %d %v", len(recs), errs)
	}
	if err := run("DEL", a, conf("")); err != nil {
		t.Fatal(err)
	}
	if s := n.state(a, c); s.hostVeth || len(s.masq) != 0 {
		t.Errorf("after DEL: %+v", s)
	}
	if s := n.state(b, c); !s.hostVeth || len(s.masq) != 1 {
		t.Errorf("DEL of %s touched %s: %+v", a.id, b.id, s)
	}
	err := run("ADD", n.container("hl-c"), fmt.Appendf(nil, `{"cniVersion":"1.0.0","name":"hlnet","type":"pier","bridge":"pt-br8",
		"stateDir":%q,"ipam":{"type":"no-such-ipam"}}`, stateDir))
	wantCode(t, err, cnierr.IOFailure, "no-such-ipam")
	if _, err := os.Stat("/sys/class/net/" + veth.HostName("hl-c", "eth0")); err == nil {
		t.Error("a failed delegated ADD left its veth")
	}
}
