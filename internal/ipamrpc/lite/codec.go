package lite

// The pier.ipam.v1 messages the plugin sends and reads, encoded by hand
// (wire.go): the field numbers below are those of
// internal/ipamrpc/ipamv1/ipam.proto. codec_test.go holds every message
// against the generated code in both directions, so a change to the .proto
// that this file does not follow fails the tests.

import (
	"errors"
	"fmt"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
)

// Field numbers of ipam.proto.
const (
	// Network
	fNetworkName      = 1
	fNetworkRangeSets = 2
	// RangeSet
	fRangeSetRanges = 1
	// Range
	fRangeSubnet = 1
	fRangeStart  = 2
	fRangeEnd    = 3
	fRangeGw     = 4
	// Owner
	fOwnerContainerID = 1
	fOwnerIfName      = 2
	// Allocate/Release/Check/GC/Status requests
	fReqNetwork   = 1
	fReqOwner     = 2
	fReqRequested = 3 // AllocateRequest
	fReqValid     = 2 // GCRequest
	// ListRequest
	fListNetwork = 1
	// AllocateResponse / CheckResponse
	fRespAddresses = 1
	fRespOwner     = 2 // AllocateResponse
	// ReleaseResponse / GCResponse
	fRespReleased = 1
	// Address
	fAddrAddress  = 1
	fAddrGateway  = 2
	fAddrRangeSet = 3
	// ListResponse, NetworkLeases, Lease
	fListNetworks   = 1
	fLeasesName     = 1
	fLeasesLeases   = 3
	fLeaseAddress   = 1
	fLeaseOwner     = 2
	fLeaseRangeSet  = 3
	fLeaseProblem   = 4
	fErrorCNICode   = 1
	fErrorMsg       = 2
	fErrorDetails   = 3
	fStatusDetails  = 3 // google.rpc.Status.details
	fAnyTypeURL     = 1
	fAnyValue       = 2
	errorDetailType = "type.googleapis.com/pier.ipam.v1.Error"
)

// appendString appends a string field; proto3 leaves an empty one out.
func appendString(b []byte, num int, s string) []byte {
	if s == "" {
		return b
	}
	b = appendTag(b, num, bytesType)
	return appendBytes(b, []byte(s))
}

func appendMessage(b []byte, num int, m []byte) []byte {
	b = appendTag(b, num, bytesType)
	return appendBytes(b, m)
}

// encodeNetwork renders conf's name and normalized range sets.
func encodeNetwork(conf *config.IPAMConfig) []byte {
	b := appendString(nil, fNetworkName, conf.Name)
	for _, set := range conf.RangeSets {
		var sb []byte
		for _, r := range set {
			spec := r.Spec()
			var rb []byte
			rb = appendString(rb, fRangeSubnet, spec.Subnet)
			rb = appendString(rb, fRangeStart, spec.RangeStart)
			rb = appendString(rb, fRangeEnd, spec.RangeEnd)
			rb = appendString(rb, fRangeGw, spec.Gateway)
			sb = appendMessage(sb, fRangeSetRanges, rb)
		}
		b = appendMessage(b, fNetworkRangeSets, sb)
	}
	return b
}

func encodeOwner(o config.Owner) []byte {
	b := appendString(nil, fOwnerContainerID, o.ContainerID)
	return appendString(b, fOwnerIfName, o.IfName)
}

// encodeOwnerRequest is AllocateRequest, ReleaseRequest or CheckRequest.
func encodeOwnerRequest(conf *config.IPAMConfig, o config.Owner, requested bool) []byte {
	b := appendMessage(nil, fReqNetwork, encodeNetwork(conf))
	b = appendMessage(b, fReqOwner, encodeOwner(o))
	if requested {
		for _, a := range conf.Requested {
			b = appendString(b, fReqRequested, a.String())
		}
	}
	return b
}

func encodeGCRequest(conf *config.IPAMConfig, valid []config.Owner) []byte {
	b := appendMessage(nil, fReqNetwork, encodeNetwork(conf))
	for _, o := range valid {
		b = appendMessage(b, fReqValid, encodeOwner(o))
	}
	return b
}

func encodeStatusRequest(conf *config.IPAMConfig) []byte {
	return appendMessage(nil, fReqNetwork, encodeNetwork(conf))
}

func encodeListRequest(network string) []byte {
	return appendString(nil, fListNetwork, network)
}

// field is one decoded field: bytes for length-delimited ones, num64 for
// varints; fixed-width values (none of ours) are skipped.
type field struct {
	num   int
	typ   wireType
	bytes []byte
	num64 uint64
}

// eachField calls fn for every field of message b.
func eachField(b []byte, fn func(f field) error) error {
	for len(b) > 0 {
		f, n, err := consumeField(b)
		if err != nil {
			return fmt.Errorf("malformed message: %w", err)
		}
		b = b[n:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// wireAddress is an Address of AllocateResponse.
type wireAddress struct {
	address, gateway string
	rangeSet         uint32
}

// decodeAllocateResponse returns the addresses and the owner they were
// allocated to.
func decodeAllocateResponse(b []byte) ([]wireAddress, config.Owner, error) {
	var out []wireAddress
	var owner config.Owner
	err := eachField(b, func(f field) error {
		switch {
		case f.num == fRespOwner && f.typ == bytesType:
			var err error
			owner, err = decodeOwner(f.bytes)
			return err
		case f.num != fRespAddresses || f.typ != bytesType:
			return nil
		}
		var a wireAddress
		err := eachField(f.bytes, func(g field) error {
			switch {
			case g.num == fAddrAddress && g.typ == bytesType:
				a.address = string(g.bytes)
			case g.num == fAddrGateway && g.typ == bytesType:
				a.gateway = string(g.bytes)
			case g.num == fAddrRangeSet && g.typ == varintType:
				a.rangeSet = uint32(g.num64)
			}
			return nil
		})
		out = append(out, a)
		return err
	})
	return out, owner, err
}

// decodeCount returns the released count of a ReleaseResponse or
// GCResponse.
func decodeCount(b []byte) (int, error) {
	n := 0
	err := eachField(b, func(f field) error {
		if f.num == fRespReleased && f.typ == varintType {
			n = int(uint32(f.num64))
		}
		return nil
	})
	if err != nil {
		return 0, cnierr.Wrap(err, cnierr.DecodingFailure, "pierd's response")
	}
	return n, nil
}

func decodeOwner(b []byte) (config.Owner, error) {
	var o config.Owner
	err := eachField(b, func(g field) error {
		switch {
		case g.num == fOwnerContainerID && g.typ == bytesType:
			o.ContainerID = string(g.bytes)
		case g.num == fOwnerIfName && g.typ == bytesType:
			o.IfName = string(g.bytes)
		}
		return nil
	})
	return o, err
}

// decodeStrings returns the repeated string field num of message b.
func decodeStrings(b []byte, num int) ([]string, error) {
	var out []string
	err := eachField(b, func(f field) error {
		if f.num == num && f.typ == bytesType {
			out = append(out, string(f.bytes))
		}
		return nil
	})
	return out, err
}

// wireLease is a Lease of ListResponse.
type wireLease struct {
	address, problem string
	owner            config.Owner
	rangeSet         int32
}

// decodeListResponse returns the leases of network name.
func decodeListResponse(b []byte, name string) ([]wireLease, error) {
	var out []wireLease
	err := eachField(b, func(f field) error {
		if f.num != fListNetworks || f.typ != bytesType {
			return nil
		}
		var netName string
		var leases []wireLease
		err := eachField(f.bytes, func(g field) error {
			switch {
			case g.num == fLeasesName && g.typ == bytesType:
				netName = string(g.bytes)
			case g.num == fLeasesLeases && g.typ == bytesType:
				l, err := decodeLease(g.bytes)
				leases = append(leases, l)
				return err
			}
			return nil
		})
		if err == nil && netName == name {
			out = append(out, leases...)
		}
		return err
	})
	return out, err
}

func decodeLease(b []byte) (wireLease, error) {
	var l wireLease
	err := eachField(b, func(f field) error {
		switch {
		case f.num == fLeaseAddress && f.typ == bytesType:
			l.address = string(f.bytes)
		case f.num == fLeaseProblem && f.typ == bytesType:
			l.problem = string(f.bytes)
		case f.num == fLeaseRangeSet && f.typ == varintType:
			l.rangeSet = int32(f.num64)
		case f.num == fLeaseOwner && f.typ == bytesType:
			var err error
			l.owner, err = decodeOwner(f.bytes)
			return err
		}
		return nil
	})
	return l, err
}

// wireError is pier.ipam.v1.Error.
type wireError struct {
	code         uint32
	msg, details string
}

var errNoDetail = errors.New("no pier.ipam.v1.Error detail")

// decodeErrorDetail finds the pier.ipam.v1.Error among the details of a
// google.rpc.Status (grpc-status-details-bin).
func decodeErrorDetail(status []byte) (wireError, error) {
	var we wireError
	found := false
	err := eachField(status, func(f field) error {
		if f.num != fStatusDetails || f.typ != bytesType || found {
			return nil
		}
		var typeURL string
		var value []byte
		err := eachField(f.bytes, func(g field) error {
			switch {
			case g.num == fAnyTypeURL && g.typ == bytesType:
				typeURL = string(g.bytes)
			case g.num == fAnyValue && g.typ == bytesType:
				value = g.bytes
			}
			return nil
		})
		if err != nil || typeURL != errorDetailType {
			return err
		}
		found = true
		return eachField(value, func(g field) error {
			switch {
			case g.num == fErrorCNICode && g.typ == varintType:
				we.code = uint32(g.num64)
			case g.num == fErrorMsg && g.typ == bytesType:
				we.msg = string(g.bytes)
			case g.num == fErrorDetails && g.typ == bytesType:
				we.details = string(g.bytes)
			}
			return nil
		})
	})
	if err == nil && !found {
		err = errNoDetail
	}
	return we, err
}
