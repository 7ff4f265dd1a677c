package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPluginBinariesStayLean guards start-up time: `pier` and `pier-ipam`
// are exec'd once per container, so every package they link is paid at each
// ADD. They must not pull in HTTP, tracing, gRPC or etcd (the CNI library's
// pkg/invoke brings OpenTelemetry along, which is why Pier runs delegated
// IPAM plugins with internal/delegate; the reference plugins' pkg/ns links
// only golang.org/x/sys and is used, through internal/netns).
//
// Daemon mode talks gRPC to pierd without grpc-go or the protobuf runtime:
// grpc-go's client shares one package with its server and links net/http
// and crypto/tls (+1.1-1.4 ms per start, 7 -> 18 MB), the protobuf runtime
// +0.25 ms; internal/ipamrpc/lite speaks the wire protocol with hpack alone
// (see its package doc for the measurements). Prometheus is pierd's only,
// and so are the Kubernetes API types the network policy engine reads: the
// plugin's part of network policy (internal/netpol/dataplane) knows only
// pod names and nftables; and client-go (pierd's Kubernetes mode): a pod
// start never talks to the API server.
func TestPluginBinariesStayLean(t *testing.T) {
	forbidden := []string{
		"net/http", "go.opentelemetry.io/", "google.golang.org/grpc", "go.etcd.io/", "crypto/tls",
		"google.golang.org/protobuf", "github.com/prometheus/",
		"k8s.io/", "sigs.k8s.io/",
	}
	// The engine itself, whatever it imports in the future.
	forbiddenExact := []string{"github.com/pier-cni/pier/internal/netpol"}
	for _, pkg := range []string{"github.com/pier-cni/pier/cmd/pier", "github.com/pier-cni/pier/cmd/pier-ipam"} {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbiddenExact {
				if dep == f {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f) {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
		}
	}
}
