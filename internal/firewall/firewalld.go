package firewall

import (
	"errors"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"
	"github.com/google/nftables"
)

// The firewalld side, over its D-Bus API (org.fedoraproject.FirewallD1),
// as the reference firewall plugin's firewalld backend talks to it.

const (
	fwdName      = "org.fedoraproject.FirewallD1"
	fwdPath      = "/org/fedoraproject/FirewallD1"
	fwdZoneIface = fwdName + ".zone"
	// TrustedZone is the zone Pier's bridges join: its target is ACCEPT,
	// for traffic the bridge forwards as for traffic to the node.
	TrustedZone = "trusted"
)

type firewalldBackend struct{}

// running reports whether firewalld filters this namespace: its nftables
// table is here. The system bus is shared by every network namespace of
// the machine, so asking it alone could find a firewalld that filters
// another namespace (the host's, seen from a node namespace) and put the
// bridge's name into that one's zones.
func firewalldHere() (bool, error) {
	conn, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	tables, err := conn.ListTables()
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == firewalldTable {
			return true, nil
		}
	}
	return false, nil
}

func firewalldZones() (dbus.BusObject, func(), error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the system bus: %w", err)
	}
	return conn.Object(fwdName, fwdPath), func() { _ = conn.Close() }, nil
}

func zoneOf(obj dbus.BusObject, bridge string) (string, error) {
	var zone string
	if err := obj.Call(fwdZoneIface+".getZoneOfInterface", 0, bridge).Store(&zone); err != nil {
		return "", fmt.Errorf("firewalld getZoneOfInterface %s: %w", bridge, err)
	}
	return zone, nil
}

func (firewalldBackend) scan(bridge string) ([]Place, error) {
	here, err := firewalldHere()
	if err != nil || !here {
		return nil, err
	}
	obj, done, err := firewalldZones()
	if err != nil {
		return nil, err
	}
	defer done()
	zone, err := zoneOf(obj, bridge)
	if err != nil {
		return nil, err
	}
	why := "firewalld forwards only between zones that allow it"
	if zone != "" {
		why += "; bridge is in zone " + zone
	}
	return []Place{{Backend: BackendFirewalld, Where: "zone " + TrustedZone, Why: why, Present: zone == TrustedZone, key: zone}}, nil
}

func (firewalldBackend) add(bridge string, p Place) error {
	obj, done, err := firewalldZones()
	if err != nil {
		return err
	}
	defer done()
	method := "addInterface"
	if zone, _ := p.key.(string); zone != "" {
		method = "changeZoneOfInterface"
	}
	var res string
	err = obj.Call(fwdZoneIface+"."+method, 0, TrustedZone, bridge).Store(&res)
	if err != nil && !strings.Contains(err.Error(), "ZONE_ALREADY_SET") {
		return fmt.Errorf("firewalld %s %s %s: %w", method, TrustedZone, bridge, err)
	}
	return nil
}

func (firewalldBackend) remove(bridge string) error {
	here, err := firewalldHere()
	if err != nil || !here {
		return err
	}
	obj, done, err := firewalldZones()
	if err != nil {
		return err
	}
	defer done()
	zone, err := zoneOf(obj, bridge)
	if err != nil || zone != TrustedZone {
		return err // in another zone: someone else's choice, left alone
	}
	var res string
	err = obj.Call(fwdZoneIface+".removeInterface", 0, TrustedZone, bridge).Store(&res)
	if err != nil && !strings.Contains(err.Error(), "UNKNOWN_INTERFACE") {
		return errors.Join(fmt.Errorf("firewalld removeInterface %s %s", TrustedZone, bridge), err)
	}
	return nil
}
