package delegate

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestFindRefusesPathsAndFindsPlugins(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "myipam")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := find("myipam", "/nonexistent:"+dir); err != nil || got != plugin {
		t.Fatalf("find = %q, %v; want %q", got, err, plugin)
	}
	for _, bad := range []string{"", ".", "..", "../myipam", "/bin/sh", "a/b"} {
		if _, err := find(bad, dir); err == nil {
			t.Errorf("find(%q) succeeded; a plugin name must not be a path", bad)
		}
	}
	if _, err := find("absent", dir); err == nil {
		t.Error("find of a missing plugin succeeded")
	}
}

func TestWithCommandReplacesTheVerb(t *testing.T) {
	got := withCommand([]string{"CNI_COMMAND=ADD", "CNI_IFNAME=eth0"}, "DEL")
	if !slices.Equal(got, []string{"CNI_IFNAME=eth0", "CNI_COMMAND=DEL"}) {
		t.Fatalf("withCommand = %v", got)
	}
}

func TestResultVersion(t *testing.T) {
	conf := []byte(`{"cniVersion": "0.4.0", "name": "n"}`)
	if v, err := resultVersion(conf, []byte(`{"cniVersion": "1.0.0"}`)); err != nil || v != "1.0.0" {
		t.Fatalf("explicit version: %q %v", v, err)
	}
	if v, err := resultVersion(conf, []byte(`{"ips": []}`)); err != nil || v != "0.4.0" {
		t.Fatalf("version from config: %q %v", v, err)
	}
	if _, err := resultVersion(conf, []byte(`not json`)); err == nil {
		t.Fatal("garbage result accepted")
	}
}

// TestAddAndErrorsThroughAScript runs a tiny plugin script through Add and
// Run: the result is decoded in the version it printed, and a CNI error on
// stdout comes back as that error.
func TestAddAndErrorsThroughAScript(t *testing.T) {
	dir := t.TempDir()
	script := `#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.5/24","gateway":"10.9.0.1"}]}'
  exit 0
fi
echo '{"cniVersion":"1.0.0","code":11,"msg":"busy"}'
exit 1
`
	if err := os.WriteFile(filepath.Join(dir, "fake"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CNI_PATH", dir)
	t.Setenv("CNI_COMMAND", "SOMETHING-ELSE")
	conf := []byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"fake"}}`)
	res, err := Add(t.Context(), "fake", conf)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version() != "1.0.0" {
		t.Fatalf("result version %s", res.Version())
	}
	err = Run(t.Context(), "DEL", "fake", conf)
	if err == nil || err.Error() != "busy" {
		t.Fatalf("DEL error = %v, want the plugin's CNI error", err)
	}
}
