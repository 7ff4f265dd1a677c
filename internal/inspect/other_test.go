package inspect

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/pier-cni/pier/internal/testnet"
)

// TestOtherPluginAttachment guards that an attachment of another plugin
// in libcni's cache — containerd's cni-loopback network, which it adds to
// every sandbox beside Pier's — is shown as that plugin's, with its
// interface, and without problems: Pier built none of it, so no missing
// host veth or IPAM config is a problem (both were reported before).
func TestOtherPluginAttachment(t *testing.T) {
	const loopback = "/usr/lib/cni/loopback"
	if _, err := os.Stat(loopback); err != nil {
		t.Skip("needs the reference loopback plugin (Debian: containernetworking-plugins)")
	}
	sb := testnet.New(t)
	c := sb.Container()
	cache := t.TempDir()
	list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{"/usr/lib/cni"}, cache, nil)
	rt := &libcni.RuntimeConf{ContainerID: "sandbox1", NetNS: c.Path, IfName: "lo"}
	var atts []*Attachment
	err = sb.Node.Do(func() error {
		if _, err := cni.AddNetworkList(context.Background(), list, rt); err != nil {
			return err
		}
		atts, err = Attachments(context.Background(), Query{ContainerID: "sandbox1"}, Options{Cache: cni, ConfDir: t.TempDir()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(atts) != 1 {
		t.Fatalf("want one attachment, got %d", len(atts))
	}
	a := atts[0]
	if len(a.Problems) != 0 {
		t.Fatalf("problems reported for another plugin's attachment: %q", a.Problems)
	}
	if strings.Join(a.OtherPlugins, ",") != "loopback" || a.Interface == nil || a.Interface.Name != "lo" {
		t.Fatalf("attachment: plugins %v, interface %+v", a.OtherPlugins, a.Interface)
	}
	var b strings.Builder
	if err := WriteText(&b, a); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "(plugin loopback, not Pier's)") || strings.Contains(b.String(), "problem:") {
		t.Fatalf("text:\n%s", b.String())
	}
}
