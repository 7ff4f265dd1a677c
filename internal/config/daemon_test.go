package config

import (
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

func TestLoadIPAMDaemonSocket(t *testing.T) {
	conf, err := LoadIPAM([]byte(netconf(`{"type":"pier-ipam","subnet":"10.1.0.0/24","daemonSocket":"/run/pier//pierd.sock"}`)), "")
	if err != nil {
		t.Fatal(err)
	}
	if conf.DaemonSocket != "/run/pier/pierd.sock" {
		t.Errorf("DaemonSocket = %q", conf.DaemonSocket)
	}
	local, err := LoadIPAM([]byte(netconf(`{"type":"pier-ipam","subnet":"10.1.0.0/24"}`)), "")
	if err != nil || local.DaemonSocket != "" {
		t.Fatalf("local mode: %v, DaemonSocket %q", err, local.DaemonSocket)
	}

	refused := []struct {
		name, ipam string
		code       uint
		key        string
	}{
		{"relative socket", `{"type":"pier-ipam","subnet":"10.1.0.0/24","daemonSocket":"pierd.sock"}`, cnierr.InvalidConfig, "daemonSocket"},
		{"dataDir in daemon mode", `{"type":"pier-ipam","subnet":"10.1.0.0/24","daemonSocket":"/run/p.sock","dataDir":"/var/lib/x"}`, cnierr.UnsupportedField, "dataDir"},
		{"bad range in daemon mode", `{"type":"pier-ipam","subnet":"10.1.0.1/24","daemonSocket":"/run/p.sock"}`, cnierr.InvalidConfig, "subnet"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadIPAM([]byte(netconf(tc.ipam)), "")
			if cnierr.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("want code %d naming %q, got %v", tc.code, tc.key, err)
			}
		})
	}
}

// TestNetConfAcceptsDaemonSocket: the plugin's config no longer refuses
// daemon mode.
func TestNetConfAcceptsDaemonSocket(t *testing.T) {
	stdin := `{"cniVersion":"1.0.0","name":"n","type":"pier","ipam":{"type":"pier-ipam","subnet":"10.1.0.0/24","daemonSocket":"/run/pier/pierd.sock"}}`
	if _, err := LoadNetConf([]byte(stdin), ""); err != nil {
		t.Fatal(err)
	}
}

func TestParseRangeSetsRoundTrip(t *testing.T) {
	conf, err := LoadIPAM([]byte(netconf(`{"type":"pier-ipam","ranges":[
		[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10"},{"subnet":"10.0.1.0/24","gateway":"10.0.1.254"}],
		[{"subnet":"fd00::/64"}]]}`)), "")
	if err != nil {
		t.Fatal(err)
	}
	var specs [][]RangeSpec
	for _, set := range conf.RangeSets {
		var s []RangeSpec
		for _, r := range set {
			s = append(s, r.Spec())
		}
		specs = append(specs, s)
	}
	got, err := ParseRangeSets("network.range_sets", specs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, conf.RangeSets, func(a, b RangeSet) bool { return slices.Equal(a, b) }) {
		t.Fatalf("round trip: got %v, want %v", got, conf.RangeSets)
	}

	bad := []struct {
		name string
		sets [][]RangeSpec
		want string
	}{
		{"none", nil, "no range set"},
		{"empty set", [][]RangeSpec{{}}, "empty range set"},
		{"overlap", [][]RangeSpec{{{Subnet: "10.0.0.0/24"}}, {{Subnet: "10.0.0.0/25"}}}, "overlaps"},
		{"start after end", [][]RangeSpec{{{Subnet: "10.0.0.0/24", RangeStart: "10.0.0.9", RangeEnd: "10.0.0.8"}}}, "after rangeEnd"},
		{"mixed families", [][]RangeSpec{{{Subnet: "10.0.0.0/24"}, {Subnet: "fd00::/64"}}}, "mixes"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRangeSets("k", tc.sets)
			if cnierr.CodeOf(err) != cnierr.InvalidConfig || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want code 7 with %q, got %v", tc.want, err)
			}
		})
	}
}
