package main

import (
	"bytes"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/pierd"
)

func TestFlagErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--allow-uid", "root"}, "allow-uid"},
		{[]string{"--allow-uid", "-1"}, "allow-uid"},
		{[]string{"--allow-uid", "1000"}, "1000=NETWORK"},
		{[]string{"--max-conns-per-uid", "0"}, "--max-conns-per-uid"},
		{[]string{"--no-such-flag"}, "not defined"},
	}
	for _, tc := range cases {
		var stderr bytes.Buffer
		if code := run(tc.args, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run %v: exit %d, stderr %q; want exit 2 naming %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

func TestAllowUIDFlag(t *testing.T) {
	var g grantsFlag
	for _, v := range []string{"1000=net-a, net-b", " 1001 =net-c"} {
		if err := g.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	want := []pierd.Grant{{UID: 1000, Networks: []string{"net-a", "net-b"}}, {UID: 1001, Networks: []string{"net-c"}}}
	if !reflect.DeepEqual([]pierd.Grant(g), want) {
		t.Fatalf("grants %+v, want %+v", g, want)
	}
	for v, wantErr := range map[string]string{
		"1000":      "1000=NETWORK", // the old bare form: every network, no more
		"1000,1001": "not a uid",
		"1000=":     "1000=NETWORK",
		"root=net":  "not a uid",
		"-5=net":    "not a uid",
	} {
		if err := g.Set(v); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("Set(%q) = %v, want an error with %q", v, err, wantErr)
		}
	}
}

// TestKubeFlagErrors: Kubernetes mode refuses what it cannot run with, at
// start, naming the flag (exit 1, before any socket is made).
func TestKubeFlagErrors(t *testing.T) {
	dir := t.TempDir()
	kc := dir + "/kubeconfig"
	if err := os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: https://192.0.2.1:6443}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--socket", dir + "/s/pierd.sock", "--metrics-addr", "", "--node-name", "n1"}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--datastore", "zookeeper"}, "--datastore"},
		{[]string{"--datastore", "etcd"}, "--etcd-endpoints"},
		{[]string{"--datastore", "kubernetes", "--kubeconfig", kc}, "--cluster-cidr"},
		// Routing needs the cluster CIDRs even without masquerade: only
		// Node ranges inside them are routed.
		{[]string{"--datastore", "kubernetes", "--kubeconfig", kc, "--cni-ip-masq=false"}, "--cluster-cidr is needed with --routing vxlan"},
		{[]string{"--datastore", "kubernetes", "--kubeconfig", kc, "--cluster-cidr", "10.244.0.0"}, "--cluster-cidr"},
		{[]string{"--datastore", "kubernetes", "--kubeconfig", kc, "--cluster-cidr", "10.244.0.0/16", "--routing", "bgp"}, "routing mode"},
		{[]string{"--datastore", "kubernetes", "--kubeconfig", dir + "/missing", "--cluster-cidr", "10.244.0.0/16"}, "kubeconfig"},
		{[]string{"--datastore", "kubernetes", "--kubeconfig", kc, "--cluster-cidr", "10.244.0.0/16", "--allocate-pod-cidrs", "--node-cidr-mask-size-ipv4", "8"}, "does not fit"},
		{[]string{"--datastore", "kubernetes", "--etcd-endpoints", "http://192.0.2.1:2379"}, "exclude each other"},
		{[]string{"--network-policy"}, "--datastore kubernetes"},
	}
	for _, tc := range cases {
		var stderr bytes.Buffer
		if code := run(append(slices.Clone(base), tc.args...), &stderr); code != 1 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run %v: exit %d, stderr %q; want exit 1 naming %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
