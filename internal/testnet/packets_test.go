package testnet

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

func TestIPv4UDP(t *testing.T) {
	p := IPv4UDP(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 40001, 9000, "hi")
	if len(p) != 20+8+2 || p[0] != 0x45 || p[9] != 17 {
		t.Fatalf("header: % x", p)
	}
	if s := onesSum(p[:20]); s != 0xffff {
		t.Errorf("the header does not check: sum %#x, want 0xffff", s)
	}
	if sp, dp, l := binary.BigEndian.Uint16(p[20:]), binary.BigEndian.Uint16(p[22:]), binary.BigEndian.Uint16(p[24:]); sp != 40001 || dp != 9000 || l != 10 {
		t.Errorf("udp ports %d→%d length %d", sp, dp, l)
	}
	if !bytes.Equal(p[12:20], []byte{10, 0, 0, 1, 10, 0, 0, 2}) || string(p[28:]) != "hi" {
		t.Errorf("addresses or payload: % x", p)
	}
}

func TestVXLAN(t *testing.T) {
	src, dst := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	b := VXLAN(7, src, dst, []byte{0x45})
	want := []byte{0x08, 0, 0, 0, 0, 0, 7, 0, 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, 0x45}
	if !bytes.Equal(b, want) {
		t.Errorf("got  % x\nwant % x", b, want)
	}
}
