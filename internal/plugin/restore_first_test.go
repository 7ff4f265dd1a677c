package plugin

import (
	"slices"
	"testing"

	"github.com/pier-cni/pier/internal/nat"
)

// TestFirstADDAfterFlushRestoresTheNetwork guards the restore that a
// bridge's first ADD owes its network after a flush. A flush takes the
// marker of a bridge that still has containers; when another network's
// ADD has made the shared objects again since, an attachment without
// masquerade or host ports (whose batch touches nothing of its network's
// own) adds its elements without failing and only finds the marker
// missing. Its bridge's setup must then put back the network's other
// attachments, here a host port, as a failed batch's slow path does.
func TestFirstADDAfterFlushRestoresTheNetwork(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	b := netConf{name: "netb", bridge: "pt-b", subnet: "10.43.0.0/24", extra: `"isGateway":true,`}
	withPort := b
	withPort.extra += `"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},`
	a := netConf{name: "neta", bridge: "pt-a", subnet: "10.44.0.0/24", extra: `"isGateway":true,"ipMasq":true,`}
	n.add(n.container("x"), withPort)
	portOfX := func() bool {
		t.Helper()
		els, err := nat.ListNodeElements()
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(els.Ports, func(e nat.PortElement) bool { return e.Owner == nat.NodeOwner(b.name, "x/eth0") })
	}
	if !portOfX() {
		t.Fatal("x's host port is not there after its ADD")
	}
	n.sb.Node.MustRun(t, "nft", "flush", "ruleset")
	n.add(n.container("a1"), a) // the slow path makes the shared objects again
	n.add(n.container("y"), b)
	if !portOfX() {
		t.Errorf("after a flush, another network's ADD and y's ADD, x's host port is still gone")
	}
}
