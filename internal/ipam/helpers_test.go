package ipam

import (
	"context"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// testAllocator is the policy over one store, with an ADD that returns the
// CNI result as the plugin builds it (AllocateResult) and a DEL.
type testAllocator struct{ *storeAllocator }

func newTest(conf *config.IPAMConfig, st store.Store) testAllocator {
	return testAllocator{newStoreAllocator(conf, st)}
}

func (a testAllocator) Add(ctx context.Context, o Owner) (*current.Result, error) {
	return AllocateResult(ctx, onePolicy{a.storeAllocator}, a.conf, o)
}

func (a testAllocator) Del(ctx context.Context, o Owner) error { return a.Release(ctx, o) }

// onePolicy is an Allocator over one policy: the network argument is the
// policy's own config.
type onePolicy struct{ p *storeAllocator }

func (o onePolicy) Allocate(ctx context.Context, _ *config.IPAMConfig, w Owner) ([]Address, error) {
	return o.p.Allocate(ctx, w)
}

func (o onePolicy) Release(ctx context.Context, _ *config.IPAMConfig, w Owner) (int, error) {
	return 0, o.p.Release(ctx, w)
}

func (o onePolicy) Check(ctx context.Context, _ *config.IPAMConfig, w Owner) ([]netip.Addr, error) {
	return o.p.Check(ctx, w)
}

func (o onePolicy) List(ctx context.Context, _ *config.IPAMConfig) ([]Reservation, error) {
	return o.p.List(ctx)
}

func (o onePolicy) GC(ctx context.Context, _ *config.IPAMConfig, valid []Owner) (int, error) {
	return 0, o.p.GC(ctx, valid)
}

func (o onePolicy) Status(ctx context.Context, _ *config.IPAMConfig) error { return o.p.Status(ctx) }

// The calls of local mode, over the file store under conf.DataDir.

func local(conf *config.IPAMConfig) *Local { return NewLocal(conf.DataDir, LocalOptions{}) }

func localAdd(ctx context.Context, conf *config.IPAMConfig, o Owner) (*current.Result, error) {
	return AllocateResult(ctx, local(conf), conf, o)
}

func localDel(ctx context.Context, conf *config.IPAMConfig, o Owner) error {
	_, err := local(conf).Release(ctx, conf, o)
	return err
}

func localGC(ctx context.Context, conf *config.IPAMConfig, valid []Owner) error {
	_, err := local(conf).GC(ctx, conf, valid)
	return err
}
