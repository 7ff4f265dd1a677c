// Package nodestate keeps what Pier needs to put a node's netfilter state
// back after someone else removed it, and puts it back.
//
// # Why
//
// `nft flush ruleset`, a firewall reload or a Docker restart remove
// rules Pier made: its tables inet pier and bridge pier (masquerade, host
// ports, the RA guard, the MAC check, the localnet drop) and its accepts
// in the host's filters (package firewall). Existing containers silently
// lose them. Nothing in the kernel remembers them, and the IPAM store knows
// addresses but not port mappings or MACs, so each attachment is recorded
// on disk when it is made.
//
// # Records
//
//	<root>/<network>/attachments/<containerID>@<ifname>   JSON, 0600
//
// root is the network's data directory (ipam.dataDir for pier-ipam, next to
// the IPAM store; in daemon mode the state directory beside pierd's socket,
// which pierd knows). A record is written with a temp file and a rename
// before the ADD's nftables batch, so a flush at any moment after finds it,
// and removed by DEL after its nftables elements, under an flock(2) of the
// record that restoring takes too: a restore never re-adds the elements of
// an attachment whose DEL is running or done. Like the IPAM store it is not
// fsynced: a record matters only while its container lives, and no
// container survives a reboot; records of an earlier boot (their boot id
// differs) are dropped, and records whose host veth is gone are skipped.
//
// Cost to an ADD: one small file created and renamed (BenchmarkWriteRecord:
// 0.08-0.4 ms on the reference VM's ext4, most of it the new inode, more
// when other work loads the disk); whole ADDs measured against the branch
// without records: 1.02-1.07× in one node, interleaved.
//
// # Restoring
//
// Restore puts one network back: its bridges' setup first (host filters,
// isolation, marker: see SetupBridge), then every live record's elements,
// each a fast nftables batch once the first of the network has set its
// objects up. The plugin restores its network when its ADD's fast batch
// failed (which a flush causes), when its ADD found the bridge's marker
// missing while the network has other records (see OthersRecorded), when
// CHECK finds the bridge's marker or host accepts missing, and on every
// GC; pierd restores every network it knows when it notices a change
// (Watcher).
package nodestate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pier-cni/pier/internal/ipam/store"
	"github.com/pier-cni/pier/internal/nat"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// Record is one attachment's netfilter state.
type Record struct {
	Boot     string         `json:"boot"`
	Network  string         `json:"network"`
	Subnets  []netip.Prefix `json:"subnets"` // masquerade exemptions, as at ADD
	Bridge   string         `json:"bridge"`
	Owner    string         `json:"owner"` // <containerID>/<ifname>
	HostVeth string         `json:"hostVeth"`
	Masq     []netip.Addr   `json:"masq,omitempty"`
	Ports    []Port         `json:"ports,omitempty"`
	Spoof    *Spoof         `json:"spoof,omitempty"`
	// Sources are the addresses HostVeth may send from (ipspoofchk);
	// none: its sources are not checked.
	Sources []netip.Addr `json:"sources,omitempty"`
	// Firewall: whether the host's filters are opened for the bridge
	// (firewallBackend auto); Isolated: ingressPolicy same-bridge.
	Firewall bool `json:"firewall"`
	Isolated bool `json:"isolated,omitempty"`
	// PolicyAddrs are the addresses the ADD entered into the network
	// policy maps ("networkPolicy"), leading to the chains of Pod
	// ("namespace/name"; none: np-unclassified, which drops).
	PolicyAddrs []netip.Addr `json:"policyAddrs,omitempty"`
	Pod         string       `json:"pod,omitempty"`
}

// Port is a nat.PortMapping as recorded.
type Port struct {
	Protocol      string       `json:"protocol"`
	HostPort      uint16       `json:"hostPort"`
	HostIP        netip.Addr   `json:"hostIP,omitzero"`
	ContainerIP   netip.Addr   `json:"containerIP"`
	ContainerPort uint16       `json:"containerPort"`
	Subnet        netip.Prefix `json:"subnet"`
}

// Spoof is a nat.SpoofCheck as recorded.
type Spoof struct {
	Port string `json:"port"`
	MAC  string `json:"mac"`
}

// PortsOf converts mappings for a record.
func PortsOf(ms []nat.PortMapping) []Port {
	out := make([]Port, len(ms))
	for i, m := range ms {
		out[i] = Port(m)
	}
	return out
}

// Attachment is what nat.Add installs for the record.
func (r Record) Attachment(group uint32) (nat.Attachment, error) {
	a := nat.Attachment{
		Network: nat.Network{Name: r.Network, Subnets: r.Subnets}, Owner: r.Owner,
		Masq: r.Masq, Bridge: r.Bridge, GuardGroup: group,
	}
	for _, p := range r.Ports {
		a.Ports = append(a.Ports, nat.PortMapping(p))
	}
	if r.Spoof != nil {
		mac, err := net.ParseMAC(r.Spoof.MAC)
		if err != nil {
			return a, fmt.Errorf("record of %s: MAC %q: %w", r.Owner, r.Spoof.MAC, err)
		}
		a.Spoof = &nat.SpoofCheck{Port: r.Spoof.Port, MAC: mac}
	}
	if len(r.Sources) > 0 {
		a.Sources = &nat.SourceCheck{Port: r.HostVeth, Addrs: r.Sources}
	}
	if len(r.PolicyAddrs) > 0 {
		// Restored like an ADD: to the pod's chains if pierd has them
		// (again), else to np-unclassified until it has; never to nothing,
		// which would let the pod's traffic escape its policies.
		p := &dataplane.Attachment{Addrs: r.PolicyAddrs, Owner: nat.NodeOwner(r.Network, r.Owner)}
		if ns, name, ok := strings.Cut(r.Pod, "/"); ok {
			p.Pod = dataplane.Ref{Namespace: ns, Name: name}
		}
		a.Extra = p
	}
	return a, nil
}

// Spec is the bridge setup the record asks for.
func (r Record) Spec() BridgeSpec {
	return BridgeSpec{Bridge: r.Bridge, Firewall: r.Firewall, Isolated: r.Isolated}
}

// Modes as the IPAM store's: the records are root's business.
const (
	recordsDir = "attachments"
	fileMode   = 0o600
	dirMode    = 0o700
)

// DaemonRoot is the root of daemon-mode networks' records: the directory
// "state" beside pierd's socket. The plugin does not know pierd's data
// directory, pierd knows its socket, and /run forgets the records at a
// reboot, as it should.
func DaemonRoot(socket string) string { return filepath.Join(filepath.Dir(socket), "state") }

// Dir is where the records of network live under root.
func Dir(root, network string) string { return filepath.Join(root, network, recordsDir) }

// fileName is the record's name: the owner with "@" for the "/" (an
// interface name has no "@"... nor "/": CNI_IFNAME is checked by skel).
func fileName(owner string) (string, error) {
	cid, ifname, ok := strings.Cut(owner, "/")
	if !ok || cid == "" || ifname == "" || strings.ContainsAny(cid, "/@") || strings.Contains(ifname, "/") || strings.HasPrefix(cid, ".") {
		return "", fmt.Errorf("owner %q cannot name a record", owner)
	}
	return cid + "@" + ifname, nil
}

// BootID is the kernel's boot id, which records carry.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return string(bytes.TrimSpace(b)), nil
}

// WriteRecord writes (or replaces) the record atomically.
func WriteRecord(root string, r Record) error {
	name, err := fileName(r.Owner)
	if err != nil {
		return err
	}
	if err := validName(r.Network); err != nil {
		return err
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode record of %s: %w", r.Owner, err)
	}
	// The directories above are checked as the IPAM store checks its own:
	// whoever could write them could make this root process write
	// elsewhere.
	root, err = store.PrepareDataDir(root)
	if err != nil {
		return err
	}
	dir := Dir(root, r.Network)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create records directory: %w", err)
	}
	// O_EXCL: a temp file a crash left, or a link planted there, is
	// removed, never written through.
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("write record of %s: %w", r.Owner, err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, fileMode)
	if err != nil {
		return fmt.Errorf("write record of %s: %w", r.Owner, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		return errors.Join(fmt.Errorf("write record of %s: %w", r.Owner, err), os.Remove(tmp))
	}
	return nil
}

func validName(network string) error {
	if network == "" || network == "." || network == ".." || filepath.Base(network) != network {
		return fmt.Errorf("network name %q cannot name a directory", network)
	}
	return nil
}

// lockRecord opens the record and takes its lock. f is nil when the
// record is gone, or was removed or replaced (an ADD's rename) while this
// waited for the lock; else it is the locked record, to be read from, and
// unlock closes it, which drops the lock.
func lockRecord(path string) (f *os.File, unlock func(), err error) {
	f, err = os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, func() {}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open record: %w", err)
	}
	unlock = func() { _ = f.Close() }
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		unlock()
		return nil, nil, fmt.Errorf("lock record %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		unlock()
		return nil, nil, fmt.Errorf("stat record %s: %w", path, err)
	}
	if st.Nlink == 0 {
		return nil, unlock, nil
	}
	return f, unlock, nil
}

// decodeRecord reads a record from f.
func decodeRecord(f *os.File) (Record, error) {
	var b bytes.Buffer
	var r Record
	_, err := b.ReadFrom(f)
	if err == nil {
		err = json.Unmarshal(b.Bytes(), &r)
	}
	if err != nil {
		return Record{}, fmt.Errorf("record %s: %w", f.Name(), err)
	}
	return r, nil
}

// RemoveRecord runs undo (the removal of the attachment's nftables
// elements) under the record's lock and then removes the record, so that
// no restore re-adds what undo removed. Without a record, undo runs alone.
// The record stays when undo fails: DEL is retried.
func RemoveRecord(root, network, owner string, undo func() error) error {
	name, err := fileName(owner)
	if err != nil {
		return err
	}
	_, unlock, err := lockRecord(filepath.Join(Dir(root, network), name))
	if err != nil {
		return err
	}
	defer unlock()
	if err := undo(); err != nil {
		return err
	}
	return removeRecordFiles(root, network, owner, name)
}

// RemoveRecorded is RemoveRecord for a caller that knows the attachment
// only from its record (GC): undo gets the record as read under its lock,
// which is what a restore would put back, and does not run when the
// record is gone.
func RemoveRecorded(root, network, owner string, undo func(Record) error) error {
	name, err := fileName(owner)
	if err != nil {
		return err
	}
	f, unlock, err := lockRecord(filepath.Join(Dir(root, network), name))
	if err != nil {
		return err
	}
	defer unlock()
	if f == nil {
		return nil
	}
	r, err := decodeRecord(f)
	if err != nil {
		return err
	}
	if err := undo(r); err != nil {
		return err
	}
	return removeRecordFiles(root, network, owner, name)
}

func removeRecordFiles(root, network, owner, name string) error {
	// The temp file too: an ADD killed while writing the record leaves it.
	for _, p := range []string{filepath.Join(Dir(root, network), name), filepath.Join(Dir(root, network), "."+name+".tmp")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove record of %s: %w", owner, err)
		}
	}
	return nil
}

// SweepTemp removes the temp files of records whose owner keep rejects:
// what ADDs killed while writing left, for GC.
func SweepTemp(root, network string, keep func(owner string) bool) error {
	dir := Dir(root, network)
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("list records of network %s: %w", network, err)
	}
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutSuffix(strings.TrimPrefix(e.Name(), "."), ".tmp")
		if !ok || !strings.HasPrefix(e.Name(), ".") {
			continue
		}
		cid, ifname, _ := strings.Cut(name, "@")
		if keep(cid + "/" + ifname) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ReadRecord reads the record of owner; ok is false when there is none.
func ReadRecord(root, network, owner string) (r Record, ok bool, err error) {
	name, err := fileName(owner)
	if err != nil {
		return r, false, err
	}
	b, err := readNoFollow(filepath.Join(Dir(root, network), name))
	if errors.Is(err, os.ErrNotExist) {
		return r, false, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		return r, false, fmt.Errorf("record of %s: %w", owner, err)
	}
	return r, true, nil
}

// OthersRecorded reports whether network has records of attachments
// other than owner, reading only the directory's names.
func OthersRecorded(root, network, owner string) (bool, error) {
	mine, err := fileName(owner)
	if err != nil {
		return false, err
	}
	entries, err := os.ReadDir(Dir(root, network))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list records of network %s: %w", network, err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") && e.Name() != mine {
			return true, nil
		}
	}
	return false, nil
}

// Records reads the records of network. A record that cannot be parsed is
// reported by name in errs and skipped.
func Records(root, network string) (recs []Record, errs []error) {
	dir := Dir(root, network)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []error{fmt.Errorf("list records of network %s: %w", network, err)}
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue // temp files; nothing else belongs here
		}
		b, err := readNoFollow(filepath.Join(dir, e.Name()))
		var r Record
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("record %s: %w", filepath.Join(dir, e.Name()), err))
			continue
		}
		recs = append(recs, r)
	}
	return recs, errs
}

func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(f)
	return b.Bytes(), err
}

// Networks lists the networks with a records directory under root.
func Networks(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list networks under %s: %w", root, err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if st, err := os.Stat(Dir(root, e.Name())); err == nil && st.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
