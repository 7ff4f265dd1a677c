package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPluginBinariesStayLean guards start-up time: `pier` and `pier-ipam`
// are exec'd once per container, so every package they link is paid at each
// ADD. They must not pull in HTTP, tracing, gRPC or etcd (pkg/invoke and
// plugins' pkg/ns bring OpenTelemetry and net/http along, which is why Pier
// has internal/delegate and internal/netns).
func TestPluginBinariesStayLean(t *testing.T) {
	forbidden := []string{"net/http", "go.opentelemetry.io/", "google.golang.org/grpc", "go.etcd.io/", "crypto/tls"}
	for _, pkg := range []string{"github.com/pier-cni/pier/cmd/pier", "github.com/pier-cni/pier/cmd/pier-ipam"} {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f) {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
		}
	}
}
