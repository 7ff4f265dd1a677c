package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

// netconf wraps an "ipam" section in a network config.
func netconf(ipam string) string {
	return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net1","type":"pier","ipam":%s}`, ipam)
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// rng builds an expected Range from "subnet start end gateway".
func rng(s string) Range {
	f := strings.Fields(s)
	return Range{
		Subnet:     netip.MustParsePrefix(f[0]),
		RangeStart: netip.MustParseAddr(f[1]),
		RangeEnd:   netip.MustParseAddr(f[2]),
		Gateway:    netip.MustParseAddr(f[3]),
	}
}

func TestLoadIPAMRanges(t *testing.T) {
	cases := []struct {
		name, stdin string
		want        []RangeSet
	}{
		{"legacy subnet, v4 defaults", netconf(`{"type":"pier-ipam","subnet":"10.15.20.0/24"}`),
			[]RangeSet{{rng("10.15.20.0/24 10.15.20.1 10.15.20.254 10.15.20.1")}}},
		{"legacy with explicit fields", netconf(`{"type":"pier-ipam","subnet":"10.1.0.0/16",
			"rangeStart":"10.1.2.0","rangeEnd":"10.1.2.255","gateway":"10.1.0.254"}`),
			[]RangeSet{{rng("10.1.0.0/16 10.1.2.0 10.1.2.255 10.1.0.254")}}},
		{"v6 defaults end at the last address", netconf(`{"type":"pier-ipam","subnet":"fd00::/120"}`),
			[]RangeSet{{rng("fd00::/120 fd00::1 fd00::ff fd00::1")}}},
		{"smallest v4 subnet /30", netconf(`{"type":"pier-ipam","subnet":"10.0.0.4/30"}`),
			[]RangeSet{{rng("10.0.0.4/30 10.0.0.5 10.0.0.6 10.0.0.5")}}},
		{"dual stack ranges", netconf(`{"type":"pier-ipam","ranges":[
			[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.1.0/24"}],[{"subnet":"fd00::/64"}]]}`),
			[]RangeSet{
				{rng("10.0.0.0/24 10.0.0.1 10.0.0.254 10.0.0.1"), rng("10.0.1.0/24 10.0.1.1 10.0.1.254 10.0.1.1")},
				{rng("fd00::/64 fd00::1 fd00::ffff:ffff:ffff:ffff fd00::1")},
			}},
		{"legacy range set comes first", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24",
			"ranges":[[{"subnet":"10.0.1.0/24"}]]}`),
			[]RangeSet{{rng("10.0.0.0/24 10.0.0.1 10.0.0.254 10.0.0.1")}, {rng("10.0.1.0/24 10.0.1.1 10.0.1.254 10.0.1.1")}}},
		{"runtime ipRanges come first", `{"cniVersion":"1.0.0","name":"n","ipam":{"type":"x","subnet":"10.0.0.0/24"},
			"runtimeConfig":{"ipRanges":[[{"subnet":"10.9.0.0/24"}]]}}`,
			[]RangeSet{{rng("10.9.0.0/24 10.9.0.1 10.9.0.254 10.9.0.1")}, {rng("10.0.0.0/24 10.0.0.1 10.0.0.254 10.0.0.1")}}},
		{"v4-mapped addresses are IPv4", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","rangeStart":"::ffff:10.0.0.9"}`),
			[]RangeSet{{rng("10.0.0.0/24 10.0.0.9 10.0.0.254 10.0.0.1")}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf, err := LoadIPAM([]byte(c.stdin), "")
			if err != nil {
				t.Fatal(err)
			}
			if len(conf.RangeSets) != len(c.want) {
				t.Fatalf("range sets %v, want %v", conf.RangeSets, c.want)
			}
			for i := range c.want {
				if !slices.Equal(conf.RangeSets[i], c.want[i]) {
					t.Errorf("range set %d: %+v, want %+v", i, conf.RangeSets[i], c.want[i])
				}
			}
		})
	}
}

func TestLoadIPAMFields(t *testing.T) {
	stdin := `{"cniVersion":"0.4.0","name":"net1","ipam":{"type":"pier-ipam","subnet":"10.0.0.0/24",
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"1.1.1.1/32","gw":"10.0.0.1"}],
		"dataDir":"/run/pier//data/","resolvConf":"/etc/resolv.conf","futureKey":{"x":1}},
		"args":{"cni":{"ips":["10.0.0.7/24","10.0.0.5"]}},
		"runtimeConfig":{"ips":["10.0.0.8/24"]},
		"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}`
	conf, err := LoadIPAM([]byte(stdin), "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.5,10.0.0.6")
	if err != nil {
		t.Fatal(err)
	}
	if conf.Name != "net1" || conf.CNIVersion != "0.4.0" || conf.Type != "pier-ipam" {
		t.Errorf("name/version/type = %q %q %q", conf.Name, conf.CNIVersion, conf.Type)
	}
	if conf.DataDir != "/run/pier/data" || conf.ResolvConf != "/etc/resolv.conf" {
		t.Errorf("dataDir %q resolvConf %q", conf.DataDir, conf.ResolvConf)
	}
	if len(conf.Routes) != 2 || conf.Routes[1].GW.String() != "10.0.0.1" || conf.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("routes %v", conf.Routes)
	}
	// CNI_ARGS first, then args.cni.ips, then runtimeConfig.ips; duplicates
	// dropped; masks ignored.
	if want := addrs("10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8"); !slices.Equal(conf.Requested, want) {
		t.Errorf("requested %v, want %v", conf.Requested, want)
	}
	if want := []Owner{{"c1", "eth0"}}; !slices.Equal(conf.ValidAttachments, want) {
		t.Errorf("valid attachments %v, want %v", conf.ValidAttachments, want)
	}

	def, err := LoadIPAM([]byte(netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24"}`)), "")
	if err != nil || def.DataDir != DefaultDataDir || def.Requested != nil {
		t.Errorf("defaults: dataDir %q requested %v err %v", def.DataDir, def.Requested, err)
	}
}

func TestLoadIPAMErrors(t *testing.T) {
	cases := []struct {
		name, stdin, args string
		code              uint
		parts             []string
	}{
		{"not JSON", `{"name":`, "", cnierr.DecodingFailure, nil},
		{"wrong JSON type", `{"name":"n","ipam":{"type":"pier-ipam","ranges":"10.0.0.0/24"}}`, "", cnierr.DecodingFailure, nil},
		{"no name", `{"ipam":{"type":"pier-ipam","subnet":"10.0.0.0/24"}}`, "", cnierr.InvalidConfig, []string{`"name"`}},
		{"name escapes dataDir", `{"name":"../x","ipam":{"type":"pier-ipam","subnet":"10.0.0.0/24"}}`, "", cnierr.InvalidConfig, []string{"../x"}},
		{"no ipam", `{"name":"n"}`, "", cnierr.InvalidConfig, []string{`"ipam"`}},
		{"no type", netconf(`{"subnet":"10.0.0.0/24"}`), "", cnierr.InvalidConfig, []string{"ipam.type"}},
		{"type is a path", netconf(`{"type":"../../bin/sh","subnet":"10.0.0.0/24"}`), "", cnierr.InvalidConfig, []string{"../../bin/sh"}},
		{"type with backslash", netconf(`{"type":"a\\b","subnet":"10.0.0.0/24"}`), "", cnierr.InvalidConfig, []string{"not a path"}},
		{"no ranges", netconf(`{"type":"pier-ipam"}`), "", cnierr.InvalidConfig, []string{"no \"subnet\""}},
		{"empty range set", netconf(`{"type":"pier-ipam","ranges":[[]]}`), "", cnierr.InvalidConfig, []string{"ipam.ranges[0]", "empty"}},
		{"bad CIDR", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/33"}`), "", cnierr.InvalidConfig, []string{"ipam.subnet", "10.0.0.0/33"}},
		{"range without subnet", netconf(`{"type":"pier-ipam","ranges":[[{"rangeStart":"10.0.0.1"}]]}`), "", cnierr.InvalidConfig, []string{"ipam.ranges[0][0].subnet", "missing"}},
		{"host bits", netconf(`{"type":"pier-ipam","subnet":"10.0.0.5/24"}`), "", cnierr.InvalidConfig, []string{"host bits", "10.0.0.0/24"}},
		{"v4 /31", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/31"}`), "", cnierr.InvalidConfig, []string{"too small", "/30"}},
		{"v4 /32", netconf(`{"type":"pier-ipam","subnet":"10.0.0.1/32"}`), "", cnierr.InvalidConfig, []string{"too small"}},
		{"v6 /127", netconf(`{"type":"pier-ipam","subnet":"fd00::/127"}`), "", cnierr.InvalidConfig, []string{"too small", "/126"}},
		{"v6 /128", netconf(`{"type":"pier-ipam","subnet":"fd00::1/128"}`), "", cnierr.InvalidConfig, []string{"too small"}},
		{"mapped subnet", netconf(`{"type":"pier-ipam","subnet":"::ffff:10.0.0.0/120"}`), "", cnierr.InvalidConfig, []string{"IPv4-mapped"}},
		{"rangeStart outside", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}`), "", cnierr.InvalidConfig, []string{"ipam.rangeStart", "10.0.1.1", "outside"}},
		{"rangeEnd outside", netconf(`{"type":"pier-ipam","ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.1.1"}]]}`), "", cnierr.InvalidConfig, []string{"ipam.ranges[0][0].rangeEnd", "outside"}},
		{"gateway outside", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","gateway":"10.0.9.1"}`), "", cnierr.InvalidConfig, []string{"ipam.gateway", "10.0.9.1"}},
		{"gateway of other family", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","gateway":"fd00::1"}`), "", cnierr.InvalidConfig, []string{"outside"}},
		{"rangeStart is network address", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","rangeStart":"10.0.0.0"}`), "", cnierr.InvalidConfig, []string{"network address"}},
		{"rangeEnd is broadcast", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","rangeEnd":"10.0.0.255"}`), "", cnierr.InvalidConfig, []string{"broadcast"}},
		{"bad address", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","rangeEnd":"10.0.0.x"}`), "", cnierr.InvalidConfig, []string{"ipam.rangeEnd", "10.0.0.x"}},
		{"start after end", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.8"}`), "", cnierr.InvalidConfig, []string{"10.0.0.9 is after rangeEnd 10.0.0.8"}},
		{"only the gateway", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","rangeStart":"10.0.0.1","rangeEnd":"10.0.0.1"}`), "", cnierr.InvalidConfig, []string{"only the gateway"}},
		{"mixed families in a set", netconf(`{"type":"pier-ipam","ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}`), "", cnierr.InvalidConfig, []string{"ipam.ranges[0]", "mixes address families"}},
		{"overlap within a set", netconf(`{"type":"pier-ipam","ranges":[[{"subnet":"10.0.0.0/16"},{"subnet":"10.0.5.0/24"}]]}`), "", cnierr.InvalidConfig, []string{"overlaps"}},
		{"overlap across sets", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.200"}]]}`), "", cnierr.InvalidConfig, []string{"range set 0", "range set 1"}},
		{"two v4 sets in 0.2.0", `{"cniVersion":"0.2.0","name":"n","ipam":{"type":"pier-ipam","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.1.0/24"}]]}}`, "", cnierr.InvalidConfig, []string{"0.2.0", "2 IPv4"}},
		{"bad route", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","routes":[{"dst":"0.0.0.0/0"},{"dst":"nope"}]}`), "", cnierr.InvalidConfig, []string{"ipam.routes[1]"}},
		{"route without dst", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","routes":[{"gw":"10.0.0.1"}]}`), "", cnierr.InvalidConfig, []string{"ipam.routes[0]", "dst"}},
		{"relative dataDir", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24","dataDir":"var/lib"}`), "", cnierr.InvalidConfig, []string{"ipam.dataDir", "absolute"}},
		{"bad CNI_ARGS IP", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24"}`), "IP=10.0.0.300", cnierr.InvalidConfig, []string{"CNI_ARGS IP", "10.0.0.300"}},
		{"bad args.cni.ips", `{"name":"n","ipam":{"type":"pier-ipam","subnet":"10.0.0.0/24"},"args":{"cni":{"ips":["fe80::1%eth0"]}}}`, "", cnierr.InvalidConfig, []string{"args.cni.ips"}},
		{"bad runtimeConfig.ips", `{"name":"n","ipam":{"type":"pier-ipam","subnet":"10.0.0.0/24"},"runtimeConfig":{"ips":["10.0.0.1/99"]}}`, "", cnierr.InvalidConfig, []string{"runtimeConfig.ips"}},
		{"unknown CNI_ARGS", netconf(`{"type":"pier-ipam","subnet":"10.0.0.0/24"}`), "FOO=bar", cnierr.InvalidEnv, []string{"CNI_ARGS"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadIPAM([]byte(c.stdin), c.args)
			if err == nil {
				t.Fatal("no error")
			}
			if got := cnierr.CodeOf(err); got != c.code {
				t.Errorf("code %d, want %d (%v)", got, c.code, err)
			}
			for _, p := range c.parts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error %q does not mention %q", err, p)
				}
			}
		})
	}
}

func TestRangeSetContains(t *testing.T) {
	set := RangeSet{rng("10.0.0.0/24 10.0.0.10 10.0.0.20 10.0.0.1"), rng("10.0.1.0/24 10.0.1.1 10.0.1.1 10.0.1.254")}
	for addr, want := range map[string]int{
		"10.0.0.10": 0, "10.0.0.20": 0, "10.0.1.1": 1, "10.0.0.9": -1, "10.0.0.21": -1, "::ffff:10.0.0.10": -1, "fd00::": -1,
	} {
		i, ok := set.RangeFor(netip.MustParseAddr(addr))
		if !ok {
			i = -1
		}
		if i != want {
			t.Errorf("RangeFor(%s) = %d, want %d", addr, i, want)
		}
	}
	if s := set.String(); s != "10.0.0.10-10.0.0.20,10.0.1.1-10.0.1.1" {
		t.Errorf("String() = %q", s)
	}
}
