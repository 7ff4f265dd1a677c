// Package kubernetes holds Pier's Kubernetes manifests (pier.yaml); its
// test decodes them strictly into the Kubernetes API types, so a typo in a
// field name or a wrong type fails CI, and lints the conflist they install.
package kubernetes

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pier-cni/pier/internal/lint"
)

func TestManifestsDecode(t *testing.T) {
	raw, err := os.ReadFile("pier.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	var cm corev1.ConfigMap
	var ds appsv1.DaemonSet
	for i, doc := range strings.Split(string(raw), "\n---\n") {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "v1 ConfigMap":
			obj = &cm
		case "v1 Secret":
			obj = &corev1.Secret{}
		case "batch/v1 Job":
			obj = &batchv1.Job{}
		case "apps/v1 DaemonSet":
			obj = &ds
		default:
			t.Fatalf("document %d: unexpected %s %s", i, meta.APIVersion, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, meta.Kind, err)
		}
		kinds[meta.Kind]++
	}
	for _, k := range []string{"ConfigMap", "Secret", "Job", "DaemonSet"} {
		if kinds[k] != 1 {
			t.Errorf("want one %s, got %d", k, kinds[k])
		}
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("DaemonSet: hostNetwork %v, %d init containers, %d containers", spec.HostNetwork, len(spec.InitContainers), len(spec.Containers))
	}
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("the DaemonSet's selector does not match its pods")
	}
	args := strings.Join(spec.Containers[0].Args, " ")
	for _, flag := range []string{"--etcd-endpoints=", "--node-name=$(NODE_NAME)", "--node-ip=$(NODE_IP)"} {
		if !strings.Contains(args, flag) {
			t.Errorf("pierd args lack %s: %s", flag, args)
		}
	}

	// The conflist: valid for `pierctl lint`, in daemon mode, over the
	// cluster CIDR.
	conflist := cm.Data["10-pier.conflist"]
	var cl struct {
		Plugins []struct {
			IPAM struct {
				Subnet       string `json:"subnet"`
				DaemonSocket string `json:"daemonSocket"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(conflist), &cl); err != nil || len(cl.Plugins) == 0 {
		t.Fatalf("conflist: %v", err)
	}
	if ipam := cl.Plugins[0].IPAM; ipam.Subnet != cm.Data["cluster-cidr"] || ipam.DaemonSocket != "/run/pier/pierd.sock" {
		t.Errorf("conflist IPAM %+v: want subnet %s over /run/pier/pierd.sock", ipam, cm.Data["cluster-cidr"])
	}
	path := filepath.Join(t.TempDir(), "10-pier.conflist")
	if err := os.WriteFile(path, []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	res := lint.File(path, lint.Options{Uplinks: func() ([]lint.Uplink, error) { return nil, nil }})
	if errs, _ := res.Counts(); errs > 0 {
		t.Errorf("conflist lint: %+v", res.Findings)
	}
}
