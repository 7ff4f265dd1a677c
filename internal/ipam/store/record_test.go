package store

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func TestParseRecord(t *testing.T) {
	cases := []struct {
		in      string
		id, if_ string
		ok      bool
	}{
		{"abc123@eth0\n10.0.0.2\n", "abc123", "eth0", true},
		{"abc123@eth0\n", "abc123", "eth0", true},
		{"abc123@eth0", "abc123", "eth0", true},      // hand-edited, no newline
		{"abc@eth0\ngarbage\n", "abc", "eth0", true}, // only the first line counts
		{"a_b.c-d@net@1\n", "a_b.c-d", "net@1", true},
		{"", "", "", false},
		{"\n", "", "", false},
		{"abc123\n", "", "", false},       // host-local's format has no '@'
		{"abc123\r\neth0", "", "", false}, // host-local's two-line format
		{"@eth0\n", "", "", false},
		{"abc@\n", "", "", false},
		{"-abc@eth0\n", "", "", false},
		{"abc@eth 0\n", "", "", false},
		{"abc@../x\n", "", "", false},
		{"abc@..\n", "", "", false},
	}
	for _, c := range cases {
		got, err := parseRecord([]byte(c.in))
		if want := (Owner{ContainerID: c.id, IfName: c.if_}); (err == nil) != c.ok || got != want {
			t.Errorf("parseRecord(%q) = %v, %v; want %v, ok=%v", c.in, got, err, want, c.ok)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("parseRecord(%q) error %v is not ErrCorrupt", c.in, err)
		}
	}
}

func TestParseIndex(t *testing.T) {
	o, got, err := parseIndex([]byte("c1@eth0\n10.0.0.2\nfd00::5\n\n"))
	if err != nil || o != (Owner{ContainerID: "c1", IfName: "eth0"}) ||
		!slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::5")}) {
		t.Errorf("parseIndex = %v, %v, %v", o, got, err)
	}
	// A bad line spoils neither the good ones nor the caller's ability to
	// release them.
	_, got, err = parseIndex([]byte("c1@eth0\n10.0.0.2\ngarbage\n::ffff:1.2.3.4\n10.0.0.3"))
	if !errors.Is(err, ErrCorrupt) || len(got) != 2 {
		t.Errorf("parseIndex with bad lines = %v, %v; want 2 addresses and ErrCorrupt", got, err)
	}
	if _, _, err := parseIndex([]byte("10.0.0.2\n")); !errors.Is(err, ErrCorrupt) {
		t.Errorf("parseIndex without an owner line: %v, want ErrCorrupt", err)
	}
}

// FuzzParseRecord: any bytes either parse to an owner that round-trips
// through formatIndex, or give ErrCorrupt; never a panic.
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{"abc@eth0\n", "abc", "a@b@c", "\x00@\xff", "x@" + string(bytes.Repeat([]byte("y"), 20))} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := parseRecord(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if ValidOwner(o) != nil {
			t.Fatalf("parsed an invalid owner %+v", o)
		}
		back, err := parseRecord(formatIndex(o, nil))
		if err != nil || back != o {
			t.Fatalf("round trip of %+v: %+v, %v", o, back, err)
		}
	})
}

// FuzzParseIndex: whatever parses formats back to the same owner and
// addresses.
func FuzzParseIndex(f *testing.F) {
	for _, s := range []string{"a@eth0\n10.0.0.2\n", "a@b\nfd00::1\n10.0.0.3", "\n\n", "a@b\n1.2.3.4%x\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, addrs, err := parseIndex(b)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v is not ErrCorrupt", err)
		}
		if ValidOwner(o) != nil {
			return // the owner line itself did not parse
		}
		o2, back, err := parseIndex(formatIndex(o, addrs))
		if err != nil || o2 != o || !slices.Equal(back, addrs) {
			t.Fatalf("round trip of %v %v: %v %v, %v", o, addrs, o2, back, err)
		}
	})
}
