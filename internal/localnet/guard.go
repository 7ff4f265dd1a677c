// Package localnet keeps containers away from the node's 127.0.0.0/8 on a
// bridge where route_localnet is on, with a guard that no netfilter flush
// removes.
//
// # Why route_localnet, and why it needs a guard
//
// The node reaching a host port at 127.0.0.1 (DNATed to a container) sends
// a packet from 127.0.0.1 out of the bridge, and gets the reply, after
// conntrack puts 127.0.0.1 back as its destination, in through the bridge.
// The kernel drops both as martians unless route_localnet=1 is set on the
// bridge. But the sysctl also lets in what a container sends to 127.0.0.1
// through its gateway: every service the node binds to its loopback
// (CVE-2020-8558). A drop rule in Pier's nftables table closes that, but
// `nft flush ruleset` (what a firewall reload does) removes it, and the
// sysctl stays.
//
// # The guard
//
// A tc filter on the bridge's ingress (qdisc clsact), which netfilter does
// not own: a classifier (cls_bpf, direct action) running a small eBPF
// program that drops IPv4 packets to 127.0.0.0/8 unless they carry the mark
// ReplyMark. Everything else continues to the next filter.
//
// The bridge's ingress sees what its ports send to the node, after the
// bridge chose local delivery. With br_netfilter on (bridged frames through
// the IP hooks, the kernel's default), the IP prerouting hooks have already
// run there, so the legitimate reply to the node's own connection to
// 127.0.0.1:<host port> arrives with its destination rewritten to
// 127.0.0.1. Pier's table marks it first (a rule in chain localnet of
// table inet pier: conntrack reply direction of a connection whose
// original source is in 127.0.0.0/8), and the guard lets marked packets
// pass. A container cannot set the mark, and its own connection to
// 127.0.0.1 is in the original direction. After a flush the mark rule is
// gone too: the guard then drops those replies as well (the node's own
// 127.0.0.1:<host port> fails until Pier's table is back) rather than let
// containers in. Without br_netfilter the reply reaches the bridge's
// ingress before netfilter, still addressed to the bridge, and passes.
//
// An `ip rule … prohibit` would not do: policy rules come after the
// rule that looks up table local (priority 0, always first), where
// 127.0.0.0/8 is found.
//
// The guard lives and dies with the bridge, as the sysctl does. Pier puts
// it in before it turns route_localnet on, and takes it out after it turns
// the sysctl off.
package localnet

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/sysctl"
)

// ReplyMark is the packet mark bit Pier's nftables table sets on replies
// to the node's own connections from 127.0.0.0/8, which the guard lets
// through. One bit, set with an or: other marks are kept.
const ReplyMark = 0x02000000

// Name is the guard filter's name (shown by `tc filter show dev <bridge>
// ingress`); priority is its place among the bridge's ingress filters:
// low, so that it runs before filters tools add with the default
// priorities (49152 and down).
const (
	Name     = "pier-localnet"
	priority = 16
	handle   = 1
)

// program is the guard, in eBPF: run with the packet from its Ethernet
// header, it returns TC_ACT_SHOT (2) for an IPv4 packet to 127.0.0.0/8
// without ReplyMark, else TC_ACT_UNSPEC (-1): on to the next filter.
func program() []uint64 {
	const (
		r0, r1, r6 = 0, 1, 6
		actShot    = 2
		actUnspec  = 0xffffffff // -1, sign-extended by the move
		markOff    = 8          // offsetof(struct __sk_buff, mark)
		ethTypeOff = 12         // the Ethernet header's type
		ipDstOff   = 14 + 16
	)
	return []uint64{
		insn(0xbf, r6, r1, 0, 0),            // r6 = r1 (ctx, as ld_abs wants)
		insn(0x61, r0, r6, markOff, 0),      // r0 = skb->mark
		insn(0x57, r0, 0, 0, ReplyMark),     // r0 &= ReplyMark
		insn(0x55, r0, 0, 6, 0),             // if r0 != 0 goto pass
		insn(0x28, 0, 0, 0, ethTypeOff),     // r0 = ntohs(*(u16 *)(pkt + 12))
		insn(0x55, r0, 0, 4, unix.ETH_P_IP), // if r0 != 0x0800 goto pass
		insn(0x30, 0, 0, 0, ipDstOff),       // r0 = first byte of the destination
		insn(0x55, r0, 0, 2, 127),           // if r0 != 127 goto pass
		insn(0xb7, r0, 0, 0, actShot),       // r0 = TC_ACT_SHOT
		insn(0x95, 0, 0, 0, 0),              // exit
		insn(0xb7, r0, 0, 0, actUnspec),     // pass: r0 = TC_ACT_UNSPEC
		insn(0x95, 0, 0, 0, 0),              // exit
	}
}

// insn encodes one eBPF instruction (struct bpf_insn, little endian).
func insn(code uint8, dst, src uint8, off int16, imm uint32) uint64 {
	return uint64(code) | uint64(dst&0xf)<<8 | uint64(src&0xf)<<12 | uint64(uint16(off))<<16 | uint64(imm)<<32
}

// load loads the program and returns its file descriptor.
func load() (int, error) {
	insns := program()
	license := []byte("Apache-2.0\x00")
	attr := netlink.BPFAttr{
		ProgType: uint32(netlink.BPF_PROG_TYPE_SCHED_CLS),
		InsnCnt:  uint32(len(insns)),
		Insns:    uintptr(unsafe.Pointer(&insns[0])),
		License:  uintptr(unsafe.Pointer(&license[0])),
	}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(insns)
	runtime.KeepAlive(license)
	if errno != 0 {
		return -1, fmt.Errorf("load the localnet guard's eBPF program: %w", errno)
	}
	return int(fd), nil
}

// Loadable reports whether this process may load the guard's program: it
// needs CAP_BPF with CAP_NET_ADMIN (or CAP_SYS_ADMIN); without them the
// kernel answers EPERM and no bridge can get its guard. The program is
// loaded and dropped at once.
func Loadable() error {
	fd, err := load()
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// ErrNoBridge marks a bridge that does not exist.
var ErrNoBridge = errors.New("no such bridge")

func link(bridge string) (netlink.Link, error) {
	l, err := netlink.LinkByName(bridge)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil, fmt.Errorf("localnet guard: %s: %w", bridge, ErrNoBridge)
	}
	if err != nil {
		return nil, fmt.Errorf("localnet guard: look up %s: %w", bridge, err)
	}
	return l, nil
}

// Present reports whether the bridge has the guard. A missing bridge has
// none.
func Present(bridge string) (bool, error) {
	l, err := link(bridge)
	if errors.Is(err, ErrNoBridge) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	f, err := find(l)
	return f != nil, err
}

// find returns the guard filter on the link's ingress, or nil.
func find(l netlink.Link) (*netlink.BpfFilter, error) {
	filters, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil // no ingress qdisc: no filter
		}
		return nil, fmt.Errorf("localnet guard: list ingress filters of %s: %w", l.Attrs().Name, err)
	}
	for _, f := range filters {
		if b, ok := f.(*netlink.BpfFilter); ok && b.Name == Name {
			return b, nil
		}
	}
	return nil, nil
}

// Ensure puts the guard on the bridge's ingress, adding the clsact qdisc
// when the bridge has no ingress qdisc (an existing ingress or clsact
// qdisc is shared). It is idempotent.
func Ensure(bridge string) error {
	l, err := link(bridge)
	if err != nil {
		return err
	}
	if f, err := find(l); err != nil || f != nil {
		return err
	}
	qdisc := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("localnet guard: add clsact qdisc to %s: %w", bridge, err)
	}
	fd, err := load()
	if err != nil {
		return err
	}
	defer unix.Close(fd) // the filter holds the program
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: handle, Priority: priority, Protocol: unix.ETH_P_IP},
		Fd: fd, Name: Name, DirectAction: true,
	}
	if err := netlink.FilterAdd(f); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("localnet guard: add filter to %s: %w", bridge, err)
	}
	return nil
}

// Remove takes the guard off the bridge; a missing bridge or guard is no
// error. The clsact qdisc stays: other filters may use it, and empty it
// costs nothing.
func Remove(bridge string) error {
	l, err := link(bridge)
	if errors.Is(err, ErrNoBridge) {
		return nil
	}
	if err != nil {
		return err
	}
	f, err := find(l)
	if err != nil || f == nil {
		return err
	}
	if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("localnet guard: remove filter from %s: %w", bridge, err)
	}
	return nil
}

// sysctlKey is the bridge's route_localnet under /proc/sys.
func sysctlKey(bridge string) string { return "net/ipv4/conf/" + bridge + "/route_localnet" }

// Enabled reports whether route_localnet is on for the bridge. A missing
// bridge has it off.
func Enabled(bridge string) (bool, error) {
	b, err := os.ReadFile("/proc/sys/" + sysctlKey(bridge))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read route_localnet of %s: %w", bridge, err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// Enable puts the guard on the bridge, then turns route_localnet on: the
// sysctl is never on without the guard. When the guard cannot be put on
// (a kernel without cls_bpf or clsact), the sysctl is turned off.
func Enable(bridge string) error {
	if err := Ensure(bridge); err != nil {
		if serr := sysctl.Ensure(sysctlKey(bridge), "0"); serr != nil && !errors.Is(serr, fs.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("set route_localnet=0 on bridge %s: %w", bridge, serr))
		}
		return err
	}
	if err := sysctl.Ensure(sysctlKey(bridge), "1"); err != nil {
		return fmt.Errorf("set route_localnet=1 on bridge %s: %w", bridge, err)
	}
	return nil
}

// Disable turns route_localnet off, then takes the guard off. A missing
// bridge has neither.
func Disable(bridge string) error {
	err := sysctl.Ensure(sysctlKey(bridge), "0")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("set route_localnet=0 on bridge %s: %w", bridge, err)
	}
	return Remove(bridge)
}

// Routed reports whether the node routes one of addrs (IPv4) out of the
// bridge, in its main table: whether one of them is a container behind
// it.
func Routed(bridge string, addrs []netip.Addr) (bool, error) {
	if len(addrs) == 0 {
		return false, nil
	}
	l, err := link(bridge)
	if errors.Is(err, ErrNoBridge) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, fmt.Errorf("list routes of %s: %w", bridge, err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || ones == 0 {
			continue // a default route through the bridge is no container's
		}
		p := netip.PrefixFrom(dst.Unmap(), ones)
		if slices.ContainsFunc(addrs, func(a netip.Addr) bool { return p.Contains(a.Unmap()) }) {
			return true, nil
		}
	}
	return false, nil
}
