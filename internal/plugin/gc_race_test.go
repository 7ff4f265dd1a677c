package plugin

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/nodestate"
)

// restoringAllocator runs during() when GC reaches IPAM: the moment, in
// the middle of a GC, at which another process restores the network
// (pierd's watcher, or another ADD of the network taking the slow path).
type restoringAllocator struct {
	*faultyAllocator
	during func()
}

func (r *restoringAllocator) GC(ctx context.Context, conf *config.IPAMConfig, valid []ipam.Owner) (int, error) {
	r.during()
	return r.faultyAllocator.GC(ctx, conf, valid)
}

// TestGCRestoreLeavesNoStaleElements guards GC against a restore that
// runs while it works. GC first removes the nftables elements no valid
// attachment owns, then releases their addresses, then deletes their
// veths, and only at the end their records — without the records' lock
// around the elements' removal, which is what keeps DEL safe from a
// restore. A restore in between (the record and the veth are still
// there) puts the invalid attachment's elements back, GC then removes the
// record, and the elements stay: a host port leading to an address IPAM
// has just released for the next container, and which blocks that host
// port for everyone else.
func TestGCRestoreLeavesNoStaleElements(t *testing.T) {
	n := inNode(t)
	if n == nil {
		return
	}
	c := netConf{name: "gcrace", bridge: "pt-br9", subnet: "10.39.0.0/24", extra: `"isGateway":true,"ipMasq":true,`}
	ports := c
	ports.extra += `"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},`
	drop, keep := n.container("gcr-drop"), n.container("gcr-keep")
	n.add(drop, ports)
	n.add(keep, c)
	r := &restoringAllocator{faultyAllocator: n.alloc, during: func() {
		if _, err := nodestate.Restore(nodestate.Paths{Root: n.dataDir, Lock: n.plugin.nodeLock}, c.name, false, slog.New(slog.DiscardHandler)); err != nil {
			t.Errorf("restore during GC: %v", err)
		}
	}}
	n.plugin.openAllocator = func(*config.IPAMConfig) (ipam.Allocator, io.Closer) { return r, io.NopCloser(nil) }
	gc := c
	gc.extra += `"cni.dev/valid-attachments":[{"containerID":"gcr-keep","ifname":"eth0"}],`
	if _, err := n.do("GC", attachment{}, gc); err != nil {
		t.Fatal(err)
	}
	all, err := nat.ListNodeElements()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range all.Owned(nat.NodeOwner(c.name, "gcr-drop/eth0")).Ports {
		t.Errorf("after GC, host port %d still leads to %s (released) for the attachment GC removed", p.HostPort, p.ContainerIP)
	}
	if s := n.state(drop, c); len(s.masq) > 0 || len(s.reserved) > 0 {
		t.Errorf("after GC, the removed attachment keeps masquerade elements %v and reservations %v", s.masq, s.reserved)
	}
}
