package bridge

import (
	"net/netip"
	"testing"

	"github.com/pier-cni/pier/internal/testnet"
	"github.com/pier-cni/pier/internal/testnet/portfill"
)

// BenchmarkEnsure measures Ensure on an existing, configured dual-stack
// bridge with 200 ports: what every ADD after the first pays.
func BenchmarkEnsure(b *testing.B) {
	sb := testnet.New(b)
	cfg := Config{Name: "br-test", Gateways: []netip.Prefix{gw4, gw6}}
	br := ensure(b, sb, cfg)
	portfill.Add(b, sb, br, 200)
	sb.MustDo(b, func() error {
		b.ResetTimer()
		for range b.N {
			if _, _, err := Ensure(cfg); err != nil {
				return err
			}
		}
		b.StopTimer()
		return nil
	})
}
