package store

// One format serves both owner indexes and address records, because a record
// is a hard link to its owner's index (see file.go):
//
//	alice@eth0      the owner: "<containerID>@<ifname>"
//	10.1.2.3        the owner's addresses, one per line
//	fd00::5
//
// A record's meaning is its first line; the addresses after it are the
// owner's list when the link was made, informative only. A container ID never
// holds an '@', so the first '@' splits an owner key.

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
)

// maxQuote bounds how much of a corrupt record an error message repeats.
const maxQuote = 64

// ownerKey is o's index file name and the first line of its files.
func ownerKey(o Owner) string { return o.ContainerID + "@" + o.IfName }

// parseOwnerKey is the inverse of ownerKey.
func parseOwnerKey(s string) (Owner, error) {
	id, ifname, ok := strings.Cut(s, "@")
	if !ok {
		return Owner{}, fmt.Errorf("%w: %q has no '@' between container ID and interface", ErrCorrupt, quote(s))
	}
	o := Owner{ContainerID: id, IfName: ifname}
	if err := ValidOwner(o); err != nil {
		return Owner{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return o, nil
}

func formatIndex(o Owner, addrs []netip.Addr) []byte {
	var b bytes.Buffer
	b.WriteString(ownerKey(o))
	b.WriteByte('\n')
	for _, a := range addrs {
		b.WriteString(a.String())
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// parseRecord returns the owner named by a record's first line. An empty
// file (a hand-made one, or one cut short by a power loss) is ErrCorrupt.
func parseRecord(b []byte) (Owner, error) {
	first, _, _ := bytes.Cut(b, []byte("\n"))
	return parseOwnerKey(string(first))
}

// parseIndex reads a whole index. It returns every address that parses even
// when some line does not, so a release can still free those.
func parseIndex(b []byte) (Owner, []netip.Addr, error) {
	first, rest, _ := bytes.Cut(b, []byte("\n"))
	o, err := parseOwnerKey(string(first))
	if err != nil {
		return Owner{}, nil, err
	}
	var addrs []netip.Addr
	var bad []string
	for line := range strings.SplitSeq(string(rest), "\n") {
		if line == "" {
			continue
		}
		a, err := netip.ParseAddr(line)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			bad = append(bad, quote(line))
			continue
		}
		addrs = append(addrs, a)
	}
	if len(bad) > 0 {
		return o, addrs, fmt.Errorf("%w: index lines %q are not addresses", ErrCorrupt, bad)
	}
	return o, addrs, nil
}

func quote(s string) string {
	if len(s) > maxQuote {
		return s[:maxQuote] + "…"
	}
	return s
}
