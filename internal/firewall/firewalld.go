package firewall

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/godbus/dbus/v5"
)

// The firewalld side, over its D-Bus API (org.fedoraproject.FirewallD1),
// as the reference firewall plugin's firewalld backend talks to it.
//
// # Forwarding only
//
// The bridge must be let forward, not let in: a zone whose target is
// ACCEPT (trusted, as the reference plugin uses) accepts what the bridge
// sends to the node as well, and every container would reach every
// service of the node that firewalld closes. So Pier's bridges join a zone
// of Pier's, "pier", with the default target (the node's services are
// closed to it, ICMP passes) and forwarding within the zone (container to
// container, which br_netfilter sends through the forward hook), and a
// policy "pier-forward" accepts what that zone forwards to any other zone
// (firewalld's ANY, which is not the node itself). Replies and traffic
// DNATed into the bridge (host ports) pass firewalld's own forward chain.
//
// firewalld creates zones and policies in its permanent configuration
// only, and makes them live at a reload: when they are missing, Pier adds
// both and reloads firewalld, as Docker does for its own zone. That is
// once per node (the permanent configuration outlives reboots), and costs
// that ADD a reload of firewalld: 9-10 s on the reference VM, where a
// plain `firewall-cmd --reload` takes as long. A reload drops firewalld's
// runtime-only changes; the bridges that were in Pier's zone are put back
// right after it. The bridge joins the zone in the runtime configuration
// only, so that no bridge outlives its containers in firewalld's files;
// after someone else's reload Pier puts it back (pierd at once, else the
// network's next CHECK or GC).
//
// # Someone else's zone
//
// A bridge an operator put in a zone (any zone but Pier's and firewalld's
// default zone) stays there: Pier adds nothing for it and removes nothing,
// and reports the zone as left alone (pierctl inspect, pierctl lint), since
// that zone decides what the bridge may forward and reach. The default
// zone is where every interface without a zone ends up, and where
// NetworkManager binds the devices it sees: no one's choice for the
// bridge, so Pier moves the bridge from there into its zone.

const (
	fwdName        = "org.fedoraproject.FirewallD1"
	fwdPath        = "/org/fedoraproject/FirewallD1"
	fwdConfigPath  = fwdPath + "/config"
	fwdZoneIface   = fwdName + ".zone"
	fwdPolicyIface = fwdName + ".policy"
	fwdConfigIface = fwdName + ".config"

	// Zone is the firewalld zone Pier's bridges join.
	Zone = "pier"
	// Policy is the firewalld policy that accepts what Zone forwards.
	Policy = "pier-forward"
)

type firewalldBackend struct{}

// firewalldHere reports whether firewalld filters this namespace: its
// nftables table is here (with its chains, which firewalld makes with
// it). The system bus is shared by every network namespace of the
// machine, so asking it alone could find a firewalld that filters another
// namespace (the host's, seen from a node namespace) and put the bridge's
// name into that one's zones.
func firewalldHere(v *view) bool { return v.hasTable(firewalldTable) }

// firewalld is a connection to firewalld over the system bus.
type firewalld struct {
	conn *dbus.Conn
	obj  dbus.BusObject
}

func dialFirewalld() (*firewalld, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("connect to the system bus: %w", err)
	}
	return &firewalld{conn: conn, obj: conn.Object(fwdName, fwdPath)}, nil
}

func (f *firewalld) close() { _ = f.conn.Close() } // a bus connection holds nothing to flush

func (f *firewalld) zoneOf(bridge string) (string, error) {
	var zone string
	if err := f.obj.Call(fwdZoneIface+".getZoneOfInterface", 0, bridge).Store(&zone); err != nil {
		return "", fmt.Errorf("firewalld getZoneOfInterface %s: %w", bridge, err)
	}
	return zone, nil
}

// names calls a method of obj that lists names.
func names(obj dbus.BusObject, method string) ([]string, error) {
	var out []string
	if err := obj.Call(method, 0).Store(&out); err != nil {
		return nil, fmt.Errorf("firewalld %s: %w", method[strings.LastIndex(method, ".")+1:], err)
	}
	return out, nil
}

// live reports whether Pier's zone and policy are in firewalld's runtime
// configuration.
func (f *firewalld) live() (bool, error) {
	zones, err := names(f.obj, fwdZoneIface+".getZones")
	if err != nil {
		return false, err
	}
	policies, err := names(f.obj, fwdPolicyIface+".getPolicies")
	if err != nil {
		return false, err
	}
	return slices.Contains(zones, Zone) && slices.Contains(policies, Policy), nil
}

// install adds Pier's zone and policy to firewalld's permanent
// configuration where missing, then reloads firewalld so that they are
// live (see the notes above).
func (f *firewalld) install() error {
	cfg := f.conn.Object(fwdName, fwdConfigPath)
	zones, err := names(cfg, fwdConfigIface+".getZoneNames")
	if err != nil {
		return err
	}
	if !slices.Contains(zones, Zone) {
		settings := map[string]dbus.Variant{
			"short":       dbus.MakeVariant("Pier"),
			"description": dbus.MakeVariant("Pier's bridges: forwarding within the zone; the node's services closed as in any zone without them (the policy " + Policy + " accepts what the zone forwards elsewhere)"),
			"target":      dbus.MakeVariant("default"),
			"forward":     dbus.MakeVariant(true),
		}
		if err := cfg.Call(fwdConfigIface+".addZone2", 0, Zone, settings).Err; err != nil && !strings.Contains(err.Error(), "NAME_CONFLICT") {
			return fmt.Errorf("firewalld: add zone %s to the permanent configuration: %w", Zone, err)
		}
	}
	policies, err := names(cfg, fwdConfigIface+".getPolicyNames")
	if err != nil {
		return err
	}
	if !slices.Contains(policies, Policy) {
		settings := map[string]dbus.Variant{
			"short":         dbus.MakeVariant("Pier forwarding"),
			"description":   dbus.MakeVariant("What Pier's bridges (zone " + Zone + ") forward to other zones"),
			"target":        dbus.MakeVariant("ACCEPT"),
			"ingress_zones": dbus.MakeVariant([]string{Zone}),
			"egress_zones":  dbus.MakeVariant([]string{"ANY"}),
		}
		if err := cfg.Call(fwdConfigIface+".addPolicy", 0, Policy, settings).Err; err != nil && !strings.Contains(err.Error(), "NAME_CONFLICT") {
			return fmt.Errorf("firewalld: add policy %s to the permanent configuration: %w", Policy, err)
		}
	}
	// A reload forgets the runtime bindings, those of Pier's other bridges
	// too (when the zone was live and the policy was not): they are put
	// back at once.
	var bridges []string
	if err := f.obj.Call(fwdZoneIface+".getInterfaces", 0, Zone).Store(&bridges); err != nil && !strings.Contains(err.Error(), "INVALID_ZONE") {
		return fmt.Errorf("firewalld getInterfaces %s: %w", Zone, err)
	}
	if err := f.obj.Call(fwdName+".reload", 0).Err; err != nil {
		return fmt.Errorf("firewalld: reload to make zone %s and policy %s live: %w", Zone, Policy, err)
	}
	var errs []error
	for _, b := range bridges {
		errs = append(errs, f.join(b))
	}
	return errors.Join(errs...)
}

// join puts the bridge into Pier's zone, from no zone or the default zone;
// a bridge someone put in another zone meanwhile stays there.
func (f *firewalld) join(bridge string) error {
	var res string
	err := f.obj.Call(fwdZoneIface+".changeZoneOfInterface", 0, Zone, bridge).Store(&res)
	if err != nil && !strings.Contains(err.Error(), "ZONE_ALREADY_SET") && !strings.Contains(err.Error(), "ZONE_CONFLICT") {
		return fmt.Errorf("firewalld changeZoneOfInterface %s %s: %w", Zone, bridge, err)
	}
	return nil
}

// chosenZone returns zone, or "" when it is firewalld's default zone: no
// one's choice for the bridge (see the notes above).
func (f *firewalld) chosenZone(zone string) (string, error) {
	if zone == "" || zone == Zone {
		return zone, nil
	}
	var def string
	if err := f.obj.Call(fwdName+".getDefaultZone", 0).Store(&def); err != nil {
		return "", fmt.Errorf("firewalld getDefaultZone: %w", err)
	}
	if zone == def {
		return "", nil
	}
	return zone, nil
}

// firewalldPlace is what scan found for a bridge.
type firewalldPlace struct {
	zone string // the bridge's zone; "" for none
	live bool   // Pier's zone and policy are live
}

func (firewalldBackend) scan(v *view, bridge string) ([]Place, error) {
	if !firewalldHere(v) {
		return nil, nil
	}
	f, err := dialFirewalld()
	if err != nil {
		return nil, err
	}
	defer f.close()
	zone, err := f.zoneOf(bridge)
	if err != nil {
		return nil, err
	}
	if zone, err = f.chosenZone(zone); err != nil {
		return nil, err
	}
	if zone != "" && zone != Zone {
		return []Place{{Backend: BackendFirewalld, Where: "zone " + zone, Present: true, LeftAlone: true,
			Why: "bridge is in firewalld zone " + zone + ", which someone else chose: Pier leaves it there and adds nothing; that zone decides what the bridge forwards and reaches",
			key: firewalldPlace{zone: zone}}}, nil
	}
	live, err := f.live()
	if err != nil {
		return nil, err
	}
	p := Place{Backend: BackendFirewalld, Where: "zone " + Zone + ", policy " + Policy,
		Why:     "firewalld forwards only between zones that allow it",
		Present: zone == Zone && live, key: firewalldPlace{zone: zone, live: live}}
	return []Place{p}, nil
}

func (firewalldBackend) add(_ *view, bridge string, p Place) error {
	k, _ := p.key.(firewalldPlace)
	if k.zone != "" && k.zone != Zone {
		return nil // someone else's zone: left alone
	}
	f, err := dialFirewalld()
	if err != nil {
		return err
	}
	defer f.close()
	if !k.live {
		if err := f.install(); err != nil {
			return err
		}
	}
	return f.join(bridge)
}

func (firewalldBackend) remove(v *view, bridge string) error {
	if !firewalldHere(v) {
		return nil
	}
	f, err := dialFirewalld()
	if err != nil {
		return err
	}
	defer f.close()
	zone, err := f.zoneOf(bridge)
	if err != nil || zone != Zone {
		return err // in another zone: someone else's choice, left alone
	}
	var res string
	err = f.obj.Call(fwdZoneIface+".removeInterface", 0, Zone, bridge).Store(&res)
	if err != nil && !strings.Contains(err.Error(), "UNKNOWN_INTERFACE") {
		return errors.Join(fmt.Errorf("firewalld removeInterface %s %s", Zone, bridge), err)
	}
	return nil
}
