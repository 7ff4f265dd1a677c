package main

import (
	"bytes"
	"flag"
	"reflect"
	"strings"
	"testing"
)

func TestParseInterleaved(t *testing.T) {
	cases := []struct {
		args     []string
		wantPos  []string
		wantName string
	}{
		{[]string{"net", "/ns", "--ifname", "eth1"}, []string{"net", "/ns"}, "eth1"},
		{[]string{"--ifname=eth2", "net", "/ns"}, []string{"net", "/ns"}, "eth2"},
		{[]string{"net", "--", "--ifname", "x"}, []string{"net", "--ifname", "x"}, "eth0"},
	}
	for _, c := range cases {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		name := fs.String("ifname", "eth0", "")
		pos, err := parseInterleaved(fs, c.args)
		if err != nil || !reflect.DeepEqual(pos, c.wantPos) || *name != c.wantName {
			t.Errorf("%v: pos %v ifname %s err %v", c.args, pos, *name, err)
		}
	}
}

func TestParsePortMapping(t *testing.T) {
	good := map[string]portMapping{
		"8080:80/tcp":          {HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		"53:53/UDP@10.0.0.1":   {HostPort: 53, ContainerPort: 53, Protocol: "udp", HostIP: "10.0.0.1"},
		"9000:90":              {HostPort: 9000, ContainerPort: 90, Protocol: "tcp"},
		"443:8443/tcp@[fd::1]": {HostPort: 443, ContainerPort: 8443, Protocol: "tcp", HostIP: "fd::1"},
	}
	for in, want := range good {
		if got, err := parsePortMapping(in); err != nil || got != want {
			t.Errorf("%s: %+v %v", in, got, err)
		}
	}
	for _, in := range []string{"80", "0:80/tcp", "80:70000", "80:80/icmp", "a:80", "80:+80", "80:80@host"} {
		if _, err := parsePortMapping(in); err == nil {
			t.Errorf("%s: accepted", in)
		}
	}
}

func TestCapabilityArgs(t *testing.T) {
	f := attachFlags{ips: listFlag{"10.1.0.5", "fd00::5/64"}, mac: "02:00:00:00:00:01", bandwidth: "ingressRate=1000,egressBurst=20"}
	caps, err := f.capabilityArgs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"ips":       []string{"10.1.0.5", "fd00::5/64"},
		"mac":       "02:00:00:00:00:01",
		"bandwidth": map[string]uint64{"ingressRate": 1000, "egressBurst": 20},
	}
	if !reflect.DeepEqual(caps, want) {
		t.Errorf("caps %#v", caps)
	}
	for _, bw := range []string{"rate=1", "ingressRate=-1", "ingressRate"} {
		if _, err := parseBandwidth(bw); err == nil {
			t.Errorf("bandwidth %q accepted", bw)
		}
	}
	if args, err := parseCNIArgs("IP=10.1.0.5;IgnoreUnknown=1"); err != nil || len(args) != 2 || args[0] != [2]string{"IP", "10.1.0.5"} {
		t.Errorf("CNI args: %v %v", args, err)
	}
	if _, err := parseCNIArgs("IP"); err == nil {
		t.Error("CNI args without '=' accepted")
	}
}

func TestDefaultContainerIDIsStable(t *testing.T) {
	a, b := defaultContainerID("/var/run/netns/x"), defaultContainerID("/var/run/netns/x")
	if a != b || !strings.HasPrefix(a, "pierctl-") || a == defaultContainerID("/var/run/netns/y") {
		t.Errorf("ids %s %s", a, b)
	}
}

// TestEveryCommandDocumented: each command has a summary, help and a synopsis
// line in -h, and the usage lists it.
func TestEveryCommandDocumented(t *testing.T) {
	var top bytes.Buffer
	usage(&top)
	for _, c := range commands() {
		if c.summary == "" || c.help == "" {
			t.Errorf("%s lacks a summary or help", c.name)
		}
		var out, errb bytes.Buffer
		if code := run([]string{c.name, "-h"}, &out, &errb); code != exitOK || !strings.HasPrefix(out.String(), "usage: pierctl "+c.name) {
			t.Errorf("%s -h: %d %q %q", c.name, code, out.String(), errb.String())
		}
		if !strings.Contains(top.String(), "  "+c.name+" ") {
			t.Errorf("usage does not list %s", c.name)
		}
	}
}
