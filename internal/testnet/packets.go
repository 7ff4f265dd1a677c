package testnet

import (
	"encoding/binary"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// IPv4UDP is an IPv4 packet holding one UDP datagram from src:sport to
// dst:dport, for tests that send raw frames or forge a tunnel's inner
// packet: the IPv4 header checksum is filled in (nothing else fills it
// for such a packet), the UDP checksum left zero, which IPv4 allows.
func IPv4UDP(src, dst netip.Addr, sport, dport uint16, payload string) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(ip))
	return append(ip, udp...)
}

// VXLAN is the payload of a VXLAN datagram of network vni carrying the
// IPv4 packet pkt in an Ethernet frame from src to dst.
func VXLAN(vni uint32, src, dst net.HardwareAddr, pkt []byte) []byte {
	b := make([]byte, 8, 8+14+len(pkt))
	b[0] = 0x08 // the VNI is valid
	binary.BigEndian.PutUint32(b[4:], vni<<8)
	b = append(b, dst...)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_IP)
	return append(b, pkt...)
}

// onesSum is the 16-bit ones' complement sum of b (of even length).
func onesSum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}
