package lite

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
)

// The hand-written codec against the generated one, both ways: a .proto
// change that codec.go does not follow fails here.

func testConf(t *testing.T) *config.IPAMConfig {
	t.Helper()
	conf, err := config.LoadIPAM([]byte(`{"cniVersion":"1.0.0","name":"net1","ipam":{"type":"pier-ipam",
		"daemonSocket":"/run/p.sock","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10"},{"subnet":"10.2.0.0/24"}],[{"subnet":"fd00::/64"}]]}}`), "IP=10.1.0.20")
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

func wantNetwork() *ipamv1.Network {
	return &ipamv1.Network{Name: "net1", RangeSets: []*ipamv1.RangeSet{
		{Ranges: []*ipamv1.Range{
			{Subnet: "10.1.0.0/24", RangeStart: "10.1.0.10", RangeEnd: "10.1.0.254", Gateway: "10.1.0.1"},
			{Subnet: "10.2.0.0/24", RangeStart: "10.2.0.1", RangeEnd: "10.2.0.254", Gateway: "10.2.0.1"},
		}},
		{Ranges: []*ipamv1.Range{{Subnet: "fd00::/64", RangeStart: "fd00::1", RangeEnd: "fd00::ffff:ffff:ffff:ffff", Gateway: "fd00::1"}}},
	}}
}

func TestEncodeRequestsMatchGenerated(t *testing.T) {
	conf := testConf(t)
	owner := config.Owner{ContainerID: "c1", IfName: "eth0"}
	wantOwner := &ipamv1.Owner{ContainerId: "c1", IfName: "eth0"}
	cases := []struct {
		name string
		got  []byte
		msg  proto.Message // an empty message of the right type
		want proto.Message
	}{
		{"AllocateRequest", encodeOwnerRequest(conf, owner, true), &ipamv1.AllocateRequest{},
			&ipamv1.AllocateRequest{Network: wantNetwork(), Owner: wantOwner, Requested: []string{"10.1.0.20"}}},
		{"ReleaseRequest", encodeOwnerRequest(conf, owner, false), &ipamv1.ReleaseRequest{},
			&ipamv1.ReleaseRequest{Network: wantNetwork(), Owner: wantOwner}},
		{"CheckRequest", encodeOwnerRequest(conf, owner, false), &ipamv1.CheckRequest{},
			&ipamv1.CheckRequest{Network: wantNetwork(), Owner: wantOwner}},
		{"GCRequest", encodeGCRequest(conf, []config.Owner{owner, {ContainerID: "c2", IfName: "net1"}}), &ipamv1.GCRequest{},
			&ipamv1.GCRequest{Network: wantNetwork(), Valid: []*ipamv1.Owner{wantOwner, {ContainerId: "c2", IfName: "net1"}}}},
		{"GCRequest, none valid", encodeGCRequest(conf, nil), &ipamv1.GCRequest{}, &ipamv1.GCRequest{Network: wantNetwork()}},
		{"StatusRequest", encodeStatusRequest(conf), &ipamv1.StatusRequest{}, &ipamv1.StatusRequest{Network: wantNetwork()}},
		{"ListRequest", encodeListRequest("net1"), &ipamv1.ListRequest{}, &ipamv1.ListRequest{Network: "net1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(tc.got, tc.msg); err != nil {
				t.Fatal(err)
			}
			if len(tc.msg.ProtoReflect().GetUnknown()) != 0 {
				t.Errorf("unknown fields: the codec uses a number the .proto does not have")
			}
			if !proto.Equal(tc.msg, tc.want) {
				t.Errorf("got %v\nwant %v", tc.msg, tc.want)
			}
		})
	}
}

func TestDecodeResponsesMatchGenerated(t *testing.T) {
	alloc, _ := proto.Marshal(&ipamv1.AllocateResponse{Addresses: []*ipamv1.Address{
		{Address: "10.1.0.10/24", Gateway: "10.1.0.1"}, {Address: "fd00::2/64", Gateway: "fd00::1", RangeSet: 1},
	}, Owner: &ipamv1.Owner{ContainerId: "c1", IfName: "eth0"}})
	addrs, owner, err := decodeAllocateResponse(alloc)
	want := []wireAddress{{"10.1.0.10/24", "10.1.0.1", 0}, {"fd00::2/64", "fd00::1", 1}}
	if err != nil || len(addrs) != 2 || addrs[0] != want[0] || addrs[1] != want[1] || owner != (config.Owner{ContainerID: "c1", IfName: "eth0"}) {
		t.Errorf("AllocateResponse: %v %v %v", addrs, owner, err)
	}
	for _, msg := range []proto.Message{&ipamv1.ReleaseResponse{Released: 3}, &ipamv1.GCResponse{Released: 3}} {
		b, _ := proto.Marshal(msg)
		if n, err := decodeCount(b); err != nil || n != 3 {
			t.Errorf("%T: %d %v", msg, n, err)
		}
	}

	check, _ := proto.Marshal(&ipamv1.CheckResponse{Addresses: []string{"10.1.0.10", "fd00::2"}})
	ss, err := decodeStrings(check, fRespAddresses)
	if err != nil || len(ss) != 2 || ss[1] != "fd00::2" {
		t.Errorf("CheckResponse: %v %v", ss, err)
	}

	list, _ := proto.Marshal(&ipamv1.ListResponse{Networks: []*ipamv1.NetworkLeases{
		{Name: "other", Leases: []*ipamv1.Lease{{Address: "10.9.0.2"}}},
		{Name: "net1", Pools: []*ipamv1.PoolUsage{{Size: 10, Used: 2}}, Leases: []*ipamv1.Lease{
			{Address: "10.1.0.10", Owner: &ipamv1.Owner{ContainerId: "c1", IfName: "eth0"}},
			{Address: "10.1.0.11", RangeSet: -1, Problem: "unparseable record"},
		}},
	}})
	leases, err := decodeListResponse(list, "net1")
	if err != nil || len(leases) != 2 {
		t.Fatalf("ListResponse: %v %v", leases, err)
	}
	if l := leases[0]; l.address != "10.1.0.10" || l.owner != (config.Owner{ContainerID: "c1", IfName: "eth0"}) {
		t.Errorf("lease 0: %+v", l)
	}
	if l := leases[1]; l.rangeSet != -1 || l.problem != "unparseable record" {
		t.Errorf("lease 1: %+v", l)
	}

	st, err := status.New(codes.ResourceExhausted, "full").WithDetails(&ipamv1.Error{CniCode: 102, Msg: "no free address", Details: "d"})
	if err != nil {
		t.Fatal(err)
	}
	details, _ := proto.Marshal(st.Proto())
	we, err := decodeErrorDetail(details)
	if err != nil || we != (wireError{102, "no free address", "d"}) {
		t.Errorf("error detail: %+v %v", we, err)
	}
	plain, _ := proto.Marshal(status.New(codes.Unavailable, "x").Proto())
	if _, err := decodeErrorDetail(plain); err != errNoDetail {
		t.Errorf("status without detail: %v", err)
	}
}

func TestVarintMatchesProtowire(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 300, 1<<32 - 1, 1 << 35, math.MaxInt64, math.MaxUint64} {
		got := appendVarint(nil, v)
		if want := protowire.AppendVarint(nil, v); !bytes.Equal(got, want) {
			t.Errorf("appendVarint(%d) = %x, want %x", v, got, want)
		}
		back, n, err := consumeVarint(got)
		if err != nil || back != v || n != len(got) {
			t.Errorf("consumeVarint(%x) = %d, %d, %v", got, back, n, err)
		}
	}
	for _, bad := range [][]byte{{0x80}, bytes.Repeat([]byte{0xff}, 11), append(bytes.Repeat([]byte{0xff}, 9), 0x02)} {
		if _, _, err := consumeVarint(bad); err == nil {
			t.Errorf("consumeVarint(%x): no error", bad)
		}
	}
}

// FuzzDecode: whatever pierd (or something else on its socket) sends, the
// decoders return an error or a value, never panic.
func FuzzDecode(f *testing.F) {
	alloc, _ := proto.Marshal(&ipamv1.AllocateResponse{Addresses: []*ipamv1.Address{{Address: "10.1.0.10/24", Gateway: "10.1.0.1"}}})
	list, _ := proto.Marshal(&ipamv1.ListResponse{Networks: []*ipamv1.NetworkLeases{{Name: "n", Leases: []*ipamv1.Lease{
		{Address: "10.1.0.10", Owner: &ipamv1.Owner{ContainerId: "c"}, RangeSet: -1}}}}})
	st, _ := status.New(codes.Internal, "x").WithDetails(&ipamv1.Error{CniCode: 5})
	details, _ := proto.Marshal(st.Proto())
	for _, seed := range [][]byte{nil, alloc, list, details, {0x0a, 0xff}, {0x09, 1, 2, 3, 4, 5, 6, 7, 8}} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = decodeAllocateResponse(b)
		_, _ = decodeCount(b)
		_, _ = decodeStrings(b, 1)
		_, _ = decodeListResponse(b, "n")
		_, _ = decodeErrorDetail(b)
	})
}

func TestAddressFromWire(t *testing.T) {
	a, err := address(wireAddress{address: "10.1.0.10/24", gateway: "10.1.0.1", rangeSet: 1})
	if err != nil || a.Prefix.String() != "10.1.0.10/24" || a.Gateway.String() != "10.1.0.1" || a.RangeSet != 1 {
		t.Fatalf("%v %v", a, err)
	}
	for _, bad := range []wireAddress{{address: "nope"}, {address: "10.1.0.10/24", gateway: "nope"}} {
		if _, err := address(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
