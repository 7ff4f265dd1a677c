package lite

// The protobuf wire format, as much of it as codec.go needs: varints,
// tags and length-delimited fields (https://protobuf.dev/programming-guides/encoding/).
// Hand-written rather than google.golang.org/protobuf/encoding/protowire
// because that package links the module's internal/detrand, whose init
// opens and samples the executable at every plugin start (~0.06-0.1 ms).

import (
	"errors"
	"fmt"
)

type wireType int8

const (
	varintType  wireType = 0
	fixed64Type wireType = 1
	bytesType   wireType = 2
	fixed32Type wireType = 5
)

var errTruncated = errors.New("truncated protobuf message")

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendTag(b []byte, num int, typ wireType) []byte {
	return appendVarint(b, uint64(num)<<3|uint64(typ))
}

func appendBytes(b []byte, v []byte) []byte {
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// consumeVarint returns the varint at the start of b and its length.
func consumeVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			if i == 9 && b[i] > 1 {
				return 0, 0, errors.New("varint overflows 64 bits")
			}
			return v, i + 1, nil
		}
	}
	if len(b) >= 10 {
		return 0, 0, errors.New("varint longer than 10 bytes")
	}
	return 0, 0, errTruncated
}

// consumeField splits the field at the start of b: its number and type,
// its value (the bytes of a length-delimited field, or the varint), and
// the total length consumed.
func consumeField(b []byte) (f field, n int, err error) {
	tag, n, err := consumeVarint(b)
	if err != nil {
		return field{}, 0, err
	}
	f.num, f.typ = int(tag>>3), wireType(tag&7)
	if f.num <= 0 || tag>>3 > 1<<29-1 {
		return field{}, 0, fmt.Errorf("invalid field number %d", tag>>3)
	}
	rest := b[n:]
	switch f.typ {
	case varintType:
		v, m, err := consumeVarint(rest)
		if err != nil {
			return field{}, 0, err
		}
		f.num64 = v
		return f, n + m, nil
	case bytesType:
		l, m, err := consumeVarint(rest)
		if err != nil {
			return field{}, 0, err
		}
		if l > uint64(len(rest)-m) {
			return field{}, 0, errTruncated
		}
		f.bytes = rest[m : m+int(l)]
		return f, n + m + int(l), nil
	case fixed64Type:
		if len(rest) < 8 {
			return field{}, 0, errTruncated
		}
		return f, n + 8, nil
	case fixed32Type:
		if len(rest) < 4 {
			return field{}, 0, errTruncated
		}
		return f, n + 4, nil
	}
	return field{}, 0, fmt.Errorf("unsupported wire type %d", f.typ)
}
