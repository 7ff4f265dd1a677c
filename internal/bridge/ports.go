package bridge

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Port is a link enslaved to a bridge.
type Port struct {
	Name    string
	Index   int
	Alias   string
	Hairpin bool
	MTU     int
	MAC     net.HardwareAddr
	Up      bool // administratively up
}

// Ports lists the links enslaved to bridgeName, for CHECK, GC and
// tools. It is a link dump, but one the kernel filters to the bridge's
// ports (IFLA_MASTER with strict checking); the library offers only an
// unfiltered one.
func Ports(bridgeName string) ([]Port, error) {
	n, err := openNode()
	if err != nil {
		return nil, fmt.Errorf("ports of %s: %w", bridgeName, err)
	}
	defer n.close()
	br, err := byName(n, bridgeName)
	if err != nil {
		return nil, err
	}
	var ports []Port
	var perr error
	err = n.scanPorts(br.Index, func(m []byte) bool {
		l, err := netlink.LinkDeserialize(nil, m)
		if err != nil {
			perr = err
			return false
		}
		a := l.Attrs()
		if a.MasterIndex == br.Index {
			ports = append(ports, Port{Name: a.Name, Index: a.Index, Alias: a.Alias,
				Hairpin: hairpinOf(m), MTU: a.MTU, MAC: a.HardwareAddr, Up: a.RawFlags&unix.IFF_UP != 0})
		}
		return true
	})
	if err = errors.Join(err, perr); err != nil {
		return nil, fmt.Errorf("list ports of %s: %w", bridgeName, err)
	}
	return ports, nil
}

// HasOtherPort reports whether the bridge has a port other than except
// whose alias starts with aliasPrefix: whether a DEL leaves another
// attachment on it. It stops reading the port dump at the first such port
// and reads only the name, alias and master of each, so it costs about one
// receive on a bridge with many ports, where Ports parses every one. A
// missing bridge has none.
func HasOtherPort(bridgeName, except, aliasPrefix string) (bool, error) {
	n, err := openNode()
	if err != nil {
		return false, fmt.Errorf("ports of %s: %w", bridgeName, err)
	}
	defer n.close()
	br, err := byName(n, bridgeName)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	found := false
	err = n.scanPorts(br.Index, func(m []byte) bool {
		name, alias, master := portIdentity(m)
		found = master == br.Index && name != except && strings.HasPrefix(alias, aliasPrefix)
		return !found
	})
	if err != nil {
		return false, fmt.Errorf("list ports of %s: %w", bridgeName, err)
	}
	return found, nil
}

// portIdentity reads a link message's name, alias and master.
func portIdentity(m []byte) (name, alias string, master int) {
	if len(m) < unix.SizeofIfInfomsg {
		return "", "", 0
	}
	attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
	if err != nil {
		return "", "", 0
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFLA_IFNAME:
			name = unix.ByteSliceToString(a.Value)
		case unix.IFLA_IFALIAS:
			alias = unix.ByteSliceToString(a.Value)
		case unix.IFLA_MASTER:
			if len(a.Value) == 4 {
				master = int(nl.NativeEndian().Uint32(a.Value))
			}
		}
	}
	return name, alias, master
}

// hairpinOf reads IFLA_BRPORT_MODE from a link message's bridge-port data
// (IFLA_LINKINFO / IFLA_INFO_SLAVE_DATA), which the library does not parse
// for bridge ports.
func hairpinOf(m []byte) bool {
	attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
	if err != nil {
		return false
	}
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_LINKINFO {
			continue
		}
		info, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return false
		}
		for _, i := range info {
			if i.Attr.Type&^unix.NLA_F_NESTED != nl.IFLA_INFO_SLAVE_DATA {
				continue
			}
			port, err := nl.ParseRouteAttr(i.Value)
			if err != nil {
				return false
			}
			for _, p := range port {
				if p.Attr.Type&^unix.NLA_F_NESTED == nl.IFLA_BRPORT_MODE && len(p.Value) > 0 {
					return p.Value[0] == 1
				}
			}
		}
	}
	return false
}
