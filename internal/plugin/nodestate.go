package plugin

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/firewall"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"github.com/pier-cni/pier/internal/nodestate"
	"github.com/pier-cni/pier/internal/veth"
)

// This file ties an attachment to what the node keeps beside its IPAM
// reservation (package nodestate): its record, from which Pier's nftables
// state is put back after a flush, and its bridge's node-side setup (the
// host's filters opened, isolation, the bridge's marker).

// stateRoot is where the network's records live: the IPAM data directory
// of pier-ipam, the state directory beside pierd's socket in daemon mode,
// "stateDir" (default the default data directory) for a delegated IPAM.
func (c *call) stateRoot() string {
	b, ok := c.ipam.(*pierIPAM)
	switch {
	case !ok:
		return c.conf.DelegatedStateDir()
	case b.conf.DaemonSocket != "":
		return nodestate.DaemonRoot(b.conf.DaemonSocket)
	default:
		return b.conf.DataDir
	}
}

// paths are the network's records and the node's lock.
func (c *call) paths() nodestate.Paths {
	return nodestate.Paths{Root: c.stateRoot(), Lock: c.nodeLock}
}

func (c *call) bridgeSpec(bridge string) nodestate.BridgeSpec {
	return nodestate.BridgeSpec{Bridge: bridge, Firewall: c.conf.OpensHostFirewall(), Isolated: c.conf.SameBridge()}
}

// record is what the attachment's record holds.
func (c *call) record(att nat.Attachment, hostVeth string) (nodestate.Record, error) {
	boot, err := nodestate.BootID()
	if err != nil {
		return nodestate.Record{}, err
	}
	r := nodestate.Record{
		Boot: boot, Network: att.Network.Name, Subnets: att.Network.Subnets, Bridge: att.Bridge,
		Owner: att.Owner, HostVeth: hostVeth, Masq: att.Masq, Ports: nodestate.PortsOf(att.Ports),
		Firewall: c.conf.OpensHostFirewall(), Isolated: c.conf.SameBridge(),
	}
	if att.Spoof != nil {
		r.Spoof = &nodestate.Spoof{Port: att.Spoof.Port, MAC: att.Spoof.MAC.String()}
	}
	if att.Sources != nil {
		r.Sources = att.Sources.Addrs
	}
	if p, ok := att.Extra.(*dataplane.Attachment); ok && p != nil {
		r.PolicyAddrs = p.Addrs
		if p.Pod != (dataplane.Ref{}) {
			r.Pod = p.Pod.String()
		}
	}
	return r, nil
}

// afterAdd finishes an ADD that found its bridge's marker missing or whose
// nftables batch took the slow path. A missing marker gets the bridge set
// up, unless a concurrent ADD did it while this one waited for the node
// lock. The network's other attachments are put back after a slow path,
// since what failed the fast batch may have been a flush that took theirs
// too, and after a setup when the network has other records: the marker
// of a bridge with containers goes only with a flush (of a table whose
// objects another network's slow path has made again since, or the
// attachment's batch would have failed). On a bridge whose last container
// left there are none, and a restore is not needed. Their restore failing
// does not fail this ADD (it is logged); the bridge's setup does, as this
// container needs it.
func (c *call) afterAdd(out nat.Outcome, bridge string) error {
	step := c.stepTimer()
	defer step("set up the bridge and restore the network (first container or slow path)")
	restore := out.Rebuilt
	if out.BridgeMissing {
		places, done, err := nodestate.EnsureBridge(c.nodeLock, c.bridgeSpec(bridge))
		if err != nil {
			return cnierr.Wrap(err, cnierr.IOFailure, "cannot open the node's firewall for bridge %s (set \"firewallBackend\": \"none\" to leave it alone)", bridge)
		}
		if !done {
			c.log.Debug("bridge set up meanwhile by another ADD", "bridge", bridge)
		} else {
			c.log.Info("bridge set up", "bridge", bridge, "hostFilters", firewall.Summary(places))
			if !restore {
				if restore, err = nodestate.OthersRecorded(c.stateRoot(), c.conf.Name, c.owner()); err != nil {
					c.log.Warn("cannot tell whether the network has other attachments to restore", "err", err)
				}
			}
		}
	}
	if restore {
		if _, err := nodestate.Restore(c.paths(), c.conf.Name, false, c.log); err != nil {
			c.log.Warn("could not restore every attachment of the network", "err", err)
		}
		c.verifyLocalnet(bridge)
	}
	return nil
}

// verifyLocalnet puts the localnet guard back on a bridge whose
// route_localnet is on without it. A failure is logged: the caller's own
// work is done, and the next CHECK, GC or slow ADD tries again.
func (c *call) verifyLocalnet(bridge string) {
	fixed, err := nodestate.VerifyLocalnet(c.nodeLock, bridge)
	switch {
	case err != nil:
		c.log.Warn("could not put the localnet guard on the bridge", "bridge", bridge, "err", err)
	case fixed:
		c.log.Info("bridge had route_localnet on without its guard: guard added", "bridge", bridge)
	}
}

// releaseLocalnet turns the bridge's route_localnet off, with its guard,
// when no host port leads behind it any more. A failure is logged: the
// sysctl stays on behind its guard, which is safe.
func (c *call) releaseLocalnet() {
	off, err := nodestate.ReleaseLocalnet(c.nodeLock, c.conf.Bridge)
	switch {
	case err != nil:
		c.log.Warn("could not turn route_localnet off", "bridge", c.conf.Bridge, "err", err)
	case off:
		c.log.Info("no host port leads behind the bridge any more: route_localnet off, guard removed", "bridge", c.conf.Bridge)
	}
}

// teardownBridge removes the bridge's setup if no container of Pier's but
// this attachment's (whose veth DEL is deleting meanwhile) is left on it.
// A failure is logged: the attachment itself is gone, and GC tries again.
// It returns nil, to run beside DEL's other steps.
func (c *call) teardownBridge(opts ...nat.Option) error {
	gone, err := nodestate.TeardownBridge(c.nodeLock, c.bridgeSpec(c.conf.Bridge), veth.HostName(c.args.ContainerID, c.args.IfName), opts...)
	switch {
	case err != nil:
		c.log.Warn("could not remove the bridge's setup", "bridge", c.conf.Bridge, "err", err)
	case gone:
		c.log.Info("bridge's last container gone: its host accepts and marker removed", "bridge", c.conf.Bridge)
	}
	return nil
}

// repairNodeState is CHECK's and GC's first step: when the bridge's marker
// or one of its host accepts is missing, or chains of Pier's that this
// network uses lost their rules (`nft flush table` keeps the sets and the
// marker), the network is put back from its records before anything is
// verified; and a route_localnet without its guard gets it back.
func (c *call) repairNodeState(always bool) error {
	missing, err := c.bridgeSetupMissing()
	if err != nil {
		return err
	}
	lost, err := nat.FindLostRules()
	if err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot read Pier's nftables chains")
	}
	c.verifyLocalnet(c.conf.Bridge)
	emptied := lost.Shared() || lost.Network(c.conf.Name)
	if !missing && !emptied && !always {
		return nil
	}
	n, err := nodestate.Restore(c.paths(), c.conf.Name, missing, c.log)
	if err != nil {
		return cnierr.Wrap(err, cnierr.IOFailure, "cannot restore the nftables state of network %s", c.conf.Name)
	}
	if missing || emptied {
		c.log.Info("restored the network's netfilter state", "attachments", n, "chainsWithoutRules", lost.String())
	}
	return nil
}

// bridgeSetupMissing reports whether the bridge's marker, its isolation or
// one of its host accepts is missing.
func (c *call) bridgeSetupMissing() (bool, error) {
	st, err := nat.ReadBridge(c.conf.Bridge)
	if err != nil {
		return false, cnierr.Wrap(err, cnierr.IOFailure, "cannot read the setup of bridge %s", c.conf.Bridge)
	}
	if !st.Ready || st.Isolated != c.conf.SameBridge() {
		return true, nil
	}
	if !c.conf.OpensHostFirewall() {
		return false, nil
	}
	places, err := firewall.New().Scan(c.conf.Bridge)
	if err != nil {
		return false, cnierr.Wrap(err, cnierr.IOFailure, "cannot read the node's firewall")
	}
	return len(firewall.Missing(places)) > 0, nil
}

// gcRecorded removes each recorded attachment GC finds invalid as DEL
// does: its nftables elements under its record's lock, then the record.
// Without the lock a restore running meanwhile (pierd's, or an ADD's after
// a flush), which finds the record and the veth still there, would put
// the elements back after the set-wide sweeps, and GC would then remove
// the record: a host port left leading to an address IPAM releases next.
// Elements whose address IPAM holds for a valid attachment are kept, as
// the sweeps keep them.
func (c *call) gcRecorded(ctx context.Context, valid map[string]bool) []error {
	recs, errs := nodestate.Records(c.stateRoot(), c.conf.Name)
	recs = slices.DeleteFunc(recs, func(r nodestate.Record) bool { return valid[r.Owner] })
	if len(recs) == 0 {
		return errs
	}
	heldByValid, err := c.ipam.HeldByValid(ctx)
	if err != nil {
		return append(errs, err)
	}
	for _, r := range recs {
		c.log.Info("GC: removing attachment", "owner", r.Owner)
		err := nodestate.RemoveRecorded(c.stateRoot(), c.conf.Name, r.Owner, func(r nodestate.Record) error {
			return removeRecordedElements(r, heldByValid)
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// removeRecordedElements removes what the record's ADD put in nftables,
// but for elements of addresses held by valid attachments.
func removeRecordedElements(r nodestate.Record, heldByValid map[netip.Addr]bool) error {
	notHeld := func(addrs []netip.Addr) []netip.Addr {
		return slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return heldByValid[a] })
	}
	var errs []error
	if masq := notHeld(r.Masq); len(masq) > 0 {
		errs = append(errs, nat.DelMasq(nat.Network{Name: r.Network}, masq))
	}
	if policy := notHeld(r.PolicyAddrs); len(policy) > 0 {
		errs = append(errs, dataplane.RemoveElements(policy))
	}
	all, err := nat.ListNodeElements()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	mine := all.Owned(nat.NodeOwner(r.Network, r.Owner))
	mine.Ports = slices.DeleteFunc(mine.Ports, func(e nat.PortElement) bool { return heldByValid[e.ContainerIP] })
	mine.Hairpin = slices.DeleteFunc(mine.Hairpin, func(e nat.HairpinElement) bool { return heldByValid[e.ContainerIP] })
	errs = append(errs, nat.RemoveNodeElements(mine))
	return errors.Join(errs...)
}

// gcTempRecords removes the temp files of records that ADDs killed while
// writing left for attachments GC found invalid.
func (c *call) gcTempRecords(valid map[string]bool) []error {
	return errorList(nodestate.SweepTemp(c.stateRoot(), c.conf.Name, func(owner string) bool { return valid[owner] }))
}

// gcNodeState removes the temp files of records of attachments GC found
// invalid (their records went first, with their elements), then either
// tears the bridge's setup down (no container of Pier's is left on it) or
// puts the network's whole state back, verifying the host's filters: GC
// is where a node without pierd heals from a firewall reload that left
// Pier's own tables alone.
func (c *call) gcNodeState(valid map[string]bool) []error {
	errs := c.gcTempRecords(valid)
	gone, err := nodestate.TeardownBridge(c.nodeLock, c.bridgeSpec(c.conf.Bridge), "")
	if err != nil {
		return append(errs, err)
	}
	if gone {
		c.log.Info("GC: bridge has no container left: its host accepts and marker removed", "bridge", c.conf.Bridge)
		return errs
	}
	c.releaseLocalnet()
	return append(errs, c.repairNodeState(true))
}
