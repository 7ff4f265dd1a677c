package ipam

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
)

// releaseTimeout bounds the release of addresses AllocateResult refuses.
const releaseTimeout = 10 * time.Second

// AllocateResult allocates owner's addresses with a and returns them as a
// CNI result, with the config's routes and the DNS settings of its
// resolvConf (read first, so that an unreadable file reserves nothing).
//
// What a returned is checked against the config before anyone uses it:
// one address per range set, each inside its range set and its range's
// subnet, its gateway inside its prefix. An allocator in another process
// (pierd) is a trust boundary; an answer that fails the check is released
// and refused with code 5, naming what is wrong.
func AllocateResult(ctx context.Context, a Allocator, conf *config.IPAMConfig, owner Owner) (*current.Result, error) {
	var dns types.DNS
	if conf.ResolvConf != "" {
		var err error
		if dns, err = ParseResolvConf(conf.ResolvConf); err != nil {
			return nil, err
		}
	}
	addrs, err := a.Allocate(ctx, conf, owner)
	if err != nil {
		return nil, err
	}
	if err := CheckAddresses(conf, addrs); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		if _, rerr := a.Release(rctx, conf, owner); rerr != nil {
			err = errors.Join(err, fmt.Errorf("and releasing them failed: %w", rerr))
		}
		return nil, cnierr.Wrap(err, cnierr.IOFailure, "the allocator's answer for %s in network %q is refused", owner, conf.Name)
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: conf.Routes, DNS: dns}
	for _, a := range addrs {
		ipc := &current.IPConfig{
			Address: net.IPNet{IP: a.Prefix.Addr().AsSlice(), Mask: net.CIDRMask(a.Prefix.Bits(), a.Prefix.Addr().BitLen())},
		}
		if a.Gateway.IsValid() {
			ipc.Gateway = a.Gateway.AsSlice()
		}
		res.IPs = append(res.IPs, ipc)
	}
	return res, nil
}

// CheckAddresses verifies an Allocate answer against the config: exactly
// one address per range set, in order; each inside a range of its set,
// with a prefix no wider than that range's subnet; its gateway, if any,
// inside its prefix and not the address itself.
func CheckAddresses(conf *config.IPAMConfig, addrs []Address) error {
	if len(addrs) != len(conf.RangeSets) {
		return fmt.Errorf("%d addresses for %d range sets", len(addrs), len(conf.RangeSets))
	}
	for i, a := range addrs {
		set := conf.RangeSets[i]
		ri, ok := set.RangeFor(a.Prefix.Addr())
		switch {
		case a.RangeSet != i:
			return fmt.Errorf("address %d (%s) is said to come from range set %d", i, a.Prefix, a.RangeSet)
		case !ok:
			return fmt.Errorf("%s lies outside range set %d (%s)", a.Prefix.Addr(), i, set)
		case a.Prefix.Bits() < set[ri].Subnet.Bits():
			return fmt.Errorf("%s is wider than its range's subnet %s", a.Prefix, set[ri].Subnet)
		case a.Gateway.IsValid() && (!a.Prefix.Contains(a.Gateway) || a.Gateway == a.Prefix.Addr()):
			return fmt.Errorf("gateway %s of %s is not another address of its subnet", a.Gateway, a.Prefix)
		}
	}
	return nil
}
