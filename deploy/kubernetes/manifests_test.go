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
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/pier-cni/pier/internal/kube"
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

// TestKubernetesModeManifest: pier-kubernetes.yaml decodes strictly; the
// DaemonSet runs pierd in Kubernetes mode on the host network under its
// own ServiceAccount, installs only the binaries (pierd writes the CNI
// config); RBAC grants exactly the verbs pierd uses: on Nodes get, list,
// watch (the informer, the allocator's reads) and patch (annotations,
// spec.podCIDRs), on Pods, Namespaces and NetworkPolicies list and watch
// (network policy's informers), and on Leases list, create, update and
// delete (pod range claims) in pier-system, a namespace of their own, not
// in kube-system (where they would reach the control plane's leader
// election Leases). e2e/kube_test.go runs pierd with exactly these rules
// against a real API server.
func TestKubernetesModeManifest(t *testing.T) {
	raw, err := os.ReadFile("pier-kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var (
		sa   corev1.ServiceAccount
		cr   rbacv1.ClusterRole
		crb  rbacv1.ClusterRoleBinding
		role rbacv1.Role
		rb   rbacv1.RoleBinding
		cm   corev1.ConfigMap
		ds   appsv1.DaemonSet
		ns   corev1.Namespace
	)
	objs := map[string]any{
		"v1 ServiceAccount": &sa, "v1 Namespace": &ns, "rbac.authorization.k8s.io/v1 ClusterRole": &cr,
		"rbac.authorization.k8s.io/v1 ClusterRoleBinding": &crb, "rbac.authorization.k8s.io/v1 Role": &role,
		"rbac.authorization.k8s.io/v1 RoleBinding": &rb, "v1 ConfigMap": &cm, "apps/v1 DaemonSet": &ds,
	}
	seen := map[string]int{}
	for i, doc := range strings.Split(string(raw), "\n---\n") {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		key := meta.APIVersion + " " + meta.Kind
		obj, ok := objs[key]
		if !ok {
			t.Fatalf("document %d: unexpected %s", i, key)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, meta.Kind, err)
		}
		seen[key]++
	}
	for k := range objs {
		if seen[k] != 1 {
			t.Errorf("want one %s, got %d", k, seen[k])
		}
	}
	verbs := func(rules []rbacv1.PolicyRule) map[string]string {
		out := map[string]string{}
		for _, r := range rules {
			for _, res := range r.Resources {
				out[strings.Join(r.APIGroups, ",")+"/"+res] = strings.Join(r.Verbs, ",")
			}
		}
		return out
	}
	if v := verbs(cr.Rules); len(v) != 4 || v["/nodes"] != "get,list,watch,patch" || v["/pods"] != "list,watch" ||
		v["/namespaces"] != "list,watch" || v["networking.k8s.io/networkpolicies"] != "list,watch" {
		t.Errorf("ClusterRole rules: %v", v)
	}
	if v := verbs(role.Rules); len(v) != 1 || v["coordination.k8s.io/leases"] != "list,create,update,delete" ||
		role.Namespace != kube.ClaimNamespace || rb.Namespace != kube.ClaimNamespace || ns.Name != kube.ClaimNamespace {
		t.Errorf("Role rules: %v in %s (binding in %s), want in %s, the namespace the manifest makes (%s)", v, role.Namespace, rb.Namespace, kube.ClaimNamespace, ns.Name)
	}
	for _, b := range []struct {
		ref      rbacv1.RoleRef
		subjects []rbacv1.Subject
		want     string
	}{{crb.RoleRef, crb.Subjects, cr.Name}, {rb.RoleRef, rb.Subjects, role.Name}} {
		if b.ref.Name != b.want || len(b.subjects) != 1 || b.subjects[0].Name != sa.Name || b.subjects[0].Namespace != sa.Namespace {
			t.Errorf("binding of %s: %+v %+v", b.want, b.ref, b.subjects)
		}
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != sa.Name || len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("DaemonSet: hostNetwork %v, serviceAccount %q, %d init containers, %d containers",
			spec.HostNetwork, spec.ServiceAccountName, len(spec.InitContainers), len(spec.Containers))
	}
	if script := strings.Join(spec.InitContainers[0].Args, " "); !strings.Contains(script, "pier pier-ipam") || strings.Contains(script, "conflist") {
		t.Errorf("the init container should install the binaries only:\n%s", script)
	}
	args := strings.Join(spec.Containers[0].Args, " ")
	for _, flag := range []string{"--datastore=kubernetes", "--node-name=$(NODE_NAME)", "--cluster-cidr=$(CLUSTER_CIDR)", "--routing=$(ROUTING)", "--network-policy=$(NETWORK_POLICY)", "--cni-conf-dir="} {
		if !strings.Contains(args, flag) {
			t.Errorf("pierd args lack %s: %s", flag, args)
		}
	}
	if strings.Contains(args, "--etcd") {
		t.Errorf("Kubernetes mode needs no etcd: %s", args)
	}
	for _, key := range []string{"cluster-cidr", "routing", "network-policy"} {
		if cm.Data[key] == "" {
			t.Errorf("ConfigMap lacks %s", key)
		}
	}
}
