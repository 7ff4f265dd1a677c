package plugin

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/veth"
)

// TestNetworkPolicyElements: with "networkPolicy", ADD enters the pod's
// address into the policy maps, leading to its pod's chains when pierd
// has made them and to np-unclassified when not (or when CNI_ARGS names
// no pod), and binds it to the pod's bridge port (the source check);
// DEL removes all of them, and a refused repeated ADD none.
func TestNetworkPolicyElements(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "polnet", bridge: "pt-np0", subnet: "10.32.0.0/24", extra: `"isGateway":true,"networkPolicy":true,`}
	// pierd knows x/b (its chains exist), not x/a.
	b := dataplane.Ref{Namespace: "x", Name: "b"}
	if _, err := dataplane.New().Resync(dataplane.State{Pods: []dataplane.PodChain{{Pod: b, Dir: dataplane.Ingress}, {Pod: b, Dir: dataplane.Egress}}}); err != nil {
		t.Fatal(err)
	}
	run := func(verb string, a attachment, c netConf, cniArgs string) error {
		args := a.args(c.json(n.dataDir), a.ns.Path)
		args.Args = cniArgs
		_, _, err := n.plugin.run(verb, args, verbs[verb])
		return err
	}
	targets := func(addr netip.Addr) map[dataplane.Direction]string {
		els, err := dataplane.ListElements()
		if err != nil {
			t.Fatal(err)
		}
		out := map[dataplane.Direction]string{}
		for _, e := range els {
			if e.Addr == addr {
				out[e.Dir] = e.Chain
			}
		}
		return out
	}
	bound := func(a attachment) []string {
		all, err := nat.ListNodeElements()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range all.Sources {
			switch {
			case e.Port != veth.HostName(a.id, a.ifName):
			case e.Addr.IsValid():
				out = append(out, e.Addr.String())
			default:
				out = append(out, "port")
			}
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		id, args, ingress string
	}{
		{"known", "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=b", "np-pod-x/b-in"},
		{"unknown", "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a", dataplane.ChainUnclassified},
		{"no-pod", "", dataplane.ChainUnclassified},
	} {
		a := n.container(tc.id)
		if err := run("ADD", a, c, tc.args); err != nil {
			t.Fatalf("%s: ADD: %v", tc.id, err)
		}
		addr := n.state(a, c).reserved[0]
		if got := targets(addr); got[dataplane.Ingress] != tc.ingress || len(got) != 2 {
			t.Errorf("%s: elements of %s lead to %v, want ingress %s and an egress element", tc.id, addr, got, tc.ingress)
		}
		want := []string{addr.String(), "port"}
		slices.Sort(want)
		if got := bound(a); !slices.Equal(got, want) {
			t.Errorf("%s: source check %q, want %q", tc.id, got, want)
		}
		_, err := n.do("ADD", a, c) // repeated: refused, elements kept
		wantCode(t, err, cnierr.InterfaceExists)
		if got := targets(addr); len(got) != 2 || !slices.Equal(bound(a), want) {
			t.Errorf("%s: a refused repeated ADD removed the elements: %v, %q", tc.id, got, bound(a))
		}
		if err := run("DEL", a, c, tc.args); err != nil {
			t.Fatalf("%s: DEL: %v", tc.id, err)
		}
		if got := targets(addr); len(got) != 0 || len(bound(a)) != 0 {
			t.Errorf("%s: DEL left %v, %q", tc.id, got, bound(a))
		}
	}
}
