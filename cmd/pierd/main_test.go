package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestFlagErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--allow-uid", "root"}, "--allow-uid"},
		{[]string{"--allow-uid", "-1"}, "--allow-uid"},
		{[]string{"--no-such-flag"}, "not defined"},
	}
	for _, tc := range cases {
		var stderr bytes.Buffer
		if code := run(tc.args, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run %v: exit %d, stderr %q; want exit 2 naming %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}

func TestParseUIDs(t *testing.T) {
	got, err := parseUIDs(" 1000, 65534 ,")
	if err != nil || !slices.Equal(got, []int{1000, 65534}) {
		t.Fatalf("%v %v", got, err)
	}
	if got, err := parseUIDs(""); err != nil || got != nil {
		t.Fatalf("empty: %v %v", got, err)
	}
}
