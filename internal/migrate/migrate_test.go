package migrate

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// hostLocalDir writes what host-local leaves for network "net": files in
// its current format, one in its pre-v0.8 format, one outside Pier's ranges.
func hostLocalDir(t *testing.T) string {
	dir := t.TempDir()
	files := map[string]string{
		"10.1.0.5":           "c1\r\neth0",
		"10.1.0.6":           "c2",
		"10.1.0.7":           "c3\r\neth0",
		"fd00::7":            "c3\r\neth0",
		"10.9.9.9":           "c4\r\neth0",
		"last_reserved_ip.0": "10.1.0.6",
		"lock":               "",
	}
	if err := os.MkdirAll(filepath.Join(dir, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, "net", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func target(t *testing.T) *config.IPAMConfig {
	conf, err := config.LoadIPAM([]byte(`{"cniVersion":"1.0.0","name":"net","ipam":{"type":"pier-ipam",
	  "ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}}`), "")
	if err != nil {
		t.Fatal(err)
	}
	conf.DataDir = t.TempDir()
	return conf
}

func TestMigrate(t *testing.T) {
	ctx := context.Background()
	opts := Options{HostLocalDir: hostLocalDir(t), Target: target(t)}
	rep, err := Run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	counts, errs := rep.Counts()
	if counts[Import] != 4 || counts[Skip] != 1 || errs != 0 || rep.Applied {
		t.Fatalf("dry run: %v errs %d %+v", counts, errs, rep.Items)
	}
	if _, err := os.Stat(filepath.Join(opts.Target.DataDir, "net")); !os.IsNotExist(err) {
		t.Fatalf("dry run created the store: %v", err)
	}

	opts.Apply = true
	if rep, err = Run(ctx, opts); err != nil || !rep.Applied {
		t.Fatalf("apply: %v %+v", err, rep)
	}
	res, err := ipam.NewLocal(opts.Target.DataDir, ipam.LocalOptions{}).List(ctx, opts.Target)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range res {
		got = append(got, r.Addr.String()+"="+r.Owner.String())
	}
	want := "10.1.0.5=c1/eth0 10.1.0.6=c2/eth0 10.1.0.7=c3/eth0 fd00::7=c3/eth0"
	if strings.Join(got, " ") != want {
		t.Fatalf("store holds %v, want %s", got, want)
	}
	// Pier's rotation continues after host-local's last reserved address.
	if b, _ := os.ReadFile(filepath.Join(opts.Target.DataDir, "net", "last_reserved.0")); strings.TrimSpace(string(b)) != "10.1.0.6" {
		t.Errorf("round-robin hint %q, want 10.1.0.6", b)
	}
	// An ADD after the migration gets none of the imported addresses.
	r, err := ipam.AllocateResult(ctx, ipam.NewLocal(opts.Target.DataDir, ipam.LocalOptions{}), opts.Target, ipam.Owner{ContainerID: "new", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if a := r.IPs[0].Address.IP.String(); a != "10.1.0.8" {
		t.Errorf("first ADD after migration got %s, want 10.1.0.8", a)
	}
	// Again: everything is present already.
	if rep, err = Run(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if counts, _ := rep.Counts(); counts[Present] != 4 || counts[Import] != 0 {
		t.Fatalf("second run: %v", counts)
	}
}

func TestMigrateConflictWritesNothing(t *testing.T) {
	ctx := context.Background()
	opts := Options{HostLocalDir: hostLocalDir(t), Target: target(t), Apply: true}
	st, err := store.NewFile(opts.Target.DataDir, "net")
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(ctx, func(tx store.Tx) error {
		return tx.Reserve(store.Owner{ContainerID: "other", IfName: "eth0"}, []store.Claim{{Addr: netip.MustParseAddr("10.1.0.5")}})
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, errs := rep.Counts(); errs != 1 || rep.Applied {
		t.Fatalf("conflict: %+v", rep)
	}
	if !strings.Contains(rep.Items[0].Note, "other/eth0") {
		t.Errorf("conflict note: %q", rep.Items[0].Note)
	}
	if res, _ := ipam.NewLocal(opts.Target.DataDir, ipam.LocalOptions{}).List(ctx, opts.Target); len(res) != 1 {
		t.Fatalf("a conflicting migration wrote: %+v", res)
	}
}
