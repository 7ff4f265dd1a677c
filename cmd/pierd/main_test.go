package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/pierd"
)

func TestFlagErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--allow-uid", "root"}, "allow-uid"},
		{[]string{"--allow-uid", "-1"}, "allow-uid"},
		{[]string{"--allow-uid", "1000"}, "1000=NETWORK"},
		{[]string{"--max-conns-per-uid", "0"}, "--max-conns-per-uid"},
		{[]string{"--no-such-flag"}, "not defined"},
	}
	for _, tc := range cases {
		var stderr bytes.Buffer
		if code := run(tc.args, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run %v: exit %d, stderr %q; want exit 2 naming %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

func TestAllowUIDFlag(t *testing.T) {
	var g grantsFlag
	for _, v := range []string{"1000=net-a, net-b", " 1001 =net-c"} {
		if err := g.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	want := []pierd.Grant{{UID: 1000, Networks: []string{"net-a", "net-b"}}, {UID: 1001, Networks: []string{"net-c"}}}
	if !reflect.DeepEqual([]pierd.Grant(g), want) {
		t.Fatalf("grants %+v, want %+v", g, want)
	}
	for v, wantErr := range map[string]string{
		"1000":      "1000=NETWORK", // the old bare form: every network, no more
		"1000,1001": "not a uid",
		"1000=":     "1000=NETWORK",
		"root=net":  "not a uid",
		"-5=net":    "not a uid",
	} {
		if err := g.Set(v); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("Set(%q) = %v, want an error with %q", v, err, wantErr)
		}
	}
}
