package explain

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/testnet"
)

var (
	podA = dataplane.Ref{Namespace: "x", Name: "a"}
	podB = dataplane.Ref{Namespace: "y", Name: "b"}
	polP = dataplane.Ref{Namespace: "x", Name: "p"}
	addA = netip.MustParseAddr("10.244.1.2")
	addB = netip.MustParseAddr("10.244.2.3")
)

// TestExplain installs a policy for x/a (ingress from y/b on TCP 80-81 and
// the named port http, and from 198.51.100.0/24 but .7) and checks the
// verdicts and the steps Explain reports.
func TestExplain(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t, "pt-np-")
	f, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opt := dataplane.InNetNS(int(f.Fd()))
	sel := dataplane.SelectorSetName("y/b")
	state := dataplane.State{
		Sets: []dataplane.SetMembers{
			{SetSpec: dataplane.SetSpec{Name: sel, Kind: dataplane.Addresses}, Members: []dataplane.Member{{Addr: addB, Pod: podB}}},
			{SetSpec: dataplane.SetSpec{Name: dataplane.PortSetName("http"), Kind: dataplane.PortTuples},
				Members: []dataplane.Member{{Addr: addA, Proto: dataplane.TCP, Port: 8080, Pod: podA}}},
		},
		Policies: []dataplane.PolicyChain{{Policy: polP, Dir: dataplane.Ingress, Rules: []dataplane.Rule{
			{Peers: []dataplane.Peer{{Set: sel}}, Ports: []dataplane.Port{{Proto: dataplane.TCP, First: 80, Last: 81}, {Proto: dataplane.TCP, Name: "http"}}},
			{Peers: []dataplane.Peer{{CIDR: netip.MustParsePrefix("198.51.100.0/24"), Except: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")}}}},
		}}},
		Pods: []dataplane.PodChain{
			{Pod: podA, Dir: dataplane.Ingress, Verdict: dataplane.Isolated, Policies: []dataplane.Ref{polP}},
			{Pod: podA, Dir: dataplane.Egress, Verdict: dataplane.Open},
		},
		Pointers: []dataplane.Pointer{{Addr: addA, Pod: podA}},
	}
	if _, err := dataplane.New(opt).Resync(state); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		flow  Flow
		allow bool
		says  []string // substrings of the rendered report
	}{
		{"y/b on tcp 81", Flow{addB, addA, dataplane.TCP, 81}, true, []string{"pier: policy x/p ingress rule 0", "jump np-pol-x/p-in", "decided on its own node"}},
		{"y/b on tcp 82", Flow{addB, addA, dataplane.TCP, 82}, false, []string{"pier: pod x/a is isolated for ingress", "drop"}},
		{"y/b on the named port", Flow{addB, addA, dataplane.TCP, 8080}, true, []string{"ingress rule 0"}},
		{"y/b on udp 80", Flow{addB, addA, dataplane.UDP, 80}, false, nil},
		{"outside", Flow{netip.MustParseAddr("198.51.100.9"), addA, dataplane.UDP, 5353}, true, []string{"ingress rule 1"}},
		{"outside, excepted", Flow{netip.MustParseAddr("198.51.100.7"), addA, dataplane.TCP, 80}, false, nil},
		{"x/a out (egress open)", Flow{addA, addB, dataplane.TCP, 80}, true, []string{"no policy isolates it for egress"}},
	} {
		rep, err := Explain(c.flow, false, opt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		text := Render(rep)
		if testing.Verbose() {
			t.Log(text)
		}
		if rep.Allowed != c.allow {
			t.Errorf("%s: allowed=%v, want %v\n%s", c.name, rep.Allowed, c.allow, text)
		}
		for _, s := range c.says {
			if !strings.Contains(text, s) {
				t.Errorf("%s: report lacks %q:\n%s", c.name, s, text)
			}
		}
	}
}
