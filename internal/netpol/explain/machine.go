package explain

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/pier-cni/pier/internal/netpol/dataplane"
	"golang.org/x/sys/unix"
)

// packet is the headers of the first packet of a flow.
type packet struct {
	nfproto   byte
	l4proto   byte
	network   []byte
	transport []byte
}

func newPacket(f Flow) packet {
	p := packet{l4proto: f.Proto, transport: make([]byte, 8)}
	binary.BigEndian.PutUint16(p.transport[0:], 40000) // some client port
	binary.BigEndian.PutUint16(p.transport[2:], f.Port)
	if f.Src.Is4() {
		p.nfproto = unix.NFPROTO_IPV4
		p.network = make([]byte, 20)
		p.network[0], p.network[9] = 0x45, f.Proto
		copy(p.network[12:], f.Src.AsSlice())
		copy(p.network[16:], f.Dst.AsSlice())
		return p
	}
	p.nfproto = unix.NFPROTO_IPV6
	p.network = make([]byte, 40)
	p.network[0], p.network[6] = 0x60, f.Proto
	copy(p.network[8:], f.Src.AsSlice())
	copy(p.network[24:], f.Dst.AsSlice())
	return p
}

// verdictResult is how a chain or rule ended. kind 0 with ok false:
// no verdict (fell off the end, or a rule that did not match).
type verdictResult struct {
	kind  expr.VerdictKind
	chain string
	ok    bool
}

// machine runs rules over one packet, as the kernel's nf_tables core does:
// registers of 4 bytes (NFT_REG_1..4 are 16 bytes, the 32-bit registers
// 8..23 their parts), a jump stack, verdicts.
type machine struct {
	rs    *ruleset
	pkt   packet
	regs  [64]byte
	steps []Step
	depth int
}

// run evaluates a base chain; falling off its end is its policy, accept.
func (m *machine) run(chain string) (verdictResult, error) {
	v, err := m.chain(chain)
	if err != nil {
		return v, err
	}
	if !v.ok || v.kind == expr.VerdictReturn {
		return verdictResult{kind: expr.VerdictAccept, ok: true}, nil
	}
	return v, nil
}

// chain evaluates a chain; a result without ok (or a return) means the
// caller goes on with its next rule.
func (m *machine) chain(name string) (verdictResult, error) {
	if m.depth++; m.depth > 16 {
		return verdictResult{}, fmt.Errorf("jumps nested deeper than the kernel allows, at %s", name)
	}
	defer func() { m.depth-- }()
	rules, err := m.rs.rules(name)
	if err != nil {
		return verdictResult{}, err
	}
	for i, r := range rules {
		v, action, err := m.rule(r.Exprs)
		if err != nil {
			return v, fmt.Errorf("rule %d of %s: %w", i, name, err)
		}
		if !v.ok {
			continue
		}
		m.steps = append(m.steps, Step{Chain: name, Rule: i, Comment: comment(r), Action: action})
		switch v.kind {
		case expr.VerdictJump:
			sub, err := m.chain(v.chain)
			if err != nil {
				return sub, err
			}
			if sub.ok && sub.kind != expr.VerdictReturn {
				return sub, nil
			}
		case expr.VerdictGoto:
			return m.chain(v.chain)
		case expr.VerdictContinue:
		default:
			return v, nil
		}
	}
	return verdictResult{}, nil
}

// reg returns the bytes of register r onwards.
func (m *machine) reg(r uint32) ([]byte, error) {
	switch {
	case r >= 1 && r <= 4:
		return m.regs[(r-1)*16:], nil
	case r >= 8 && r <= 23:
		return m.regs[(r-8)*4:], nil
	}
	return nil, fmt.Errorf("register %d", r)
}

// load puts data into register r, zero-padded to 4 bytes as the kernel
// does for a value shorter than a register.
func (m *machine) load(r uint32, data []byte) error {
	dst, err := m.reg(r)
	if err != nil {
		return err
	}
	n := (len(data) + 3) / 4 * 4
	clear(dst[:n])
	copy(dst, data)
	return nil
}

// rule evaluates one rule's expressions; action describes its verdict.
func (m *machine) rule(exprs []expr.Any) (verdictResult, string, error) {
	var action string
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Verdict:
			return verdictResult{kind: x.Kind, chain: x.Chain, ok: true}, action + verdictText(x.Kind, x.Chain), nil
		case *expr.Lookup:
			v, match, text, err := m.lookup(x)
			if err != nil || !match {
				return verdictResult{}, "", err
			}
			if v.ok {
				return v, action + text, nil
			}
			action += text + " "
		default:
			match, err := m.eval(e)
			if err != nil || !match {
				return verdictResult{}, "", err
			}
		}
	}
	return verdictResult{}, "", nil
}

// eval runs one non-verdict, non-lookup expression; false: no match.
func (m *machine) eval(e expr.Any) (bool, error) {
	switch x := e.(type) {
	case *expr.Meta:
		switch x.Key {
		case expr.MetaKeyNFPROTO:
			return true, m.load(x.Register, []byte{m.pkt.nfproto})
		case expr.MetaKeyL4PROTO:
			return true, m.load(x.Register, []byte{m.pkt.l4proto})
		case expr.MetaKeyPKTTYPE:
			// A flow between two addresses is unicast: "host" at the
			// forward and input hooks.
			return true, m.load(x.Register, []byte{unix.PACKET_HOST})
		}
		return false, fmt.Errorf("%w: meta key %d", errUnsupported, x.Key)
	case *expr.Payload:
		hdr := m.pkt.network
		if x.Base == expr.PayloadBaseTransportHeader {
			hdr = m.pkt.transport
		} else if x.Base != expr.PayloadBaseNetworkHeader {
			return false, fmt.Errorf("%w: payload base %d", errUnsupported, x.Base)
		}
		if int(x.Offset+x.Len) > len(hdr) {
			return false, nil
		}
		return true, m.load(x.DestRegister, hdr[x.Offset:x.Offset+x.Len])
	case *expr.Ct:
		if x.Key != expr.CtKeySTATE {
			return false, fmt.Errorf("%w: ct key %d", errUnsupported, x.Key)
		}
		b := make([]byte, 4)
		binary.NativeEndian.PutUint32(b, expr.CtStateBitNEW) // a new connection
		return true, m.load(x.Register, b)
	case *expr.Bitwise:
		src, err := m.reg(x.SourceRegister)
		if err != nil {
			return false, err
		}
		out := make([]byte, x.Len)
		for i := range out {
			out[i] = src[i]&x.Mask[i] ^ x.Xor[i]
		}
		return true, m.load(x.DestRegister, out)
	case *expr.Cmp:
		r, err := m.reg(x.Register)
		if err != nil {
			return false, err
		}
		return compare(x.Op, bytes.Compare(r[:len(x.Data)], x.Data))
	case *expr.Range:
		r, err := m.reg(x.Register)
		if err != nil {
			return false, err
		}
		in := bytes.Compare(r[:len(x.FromData)], x.FromData) >= 0 && bytes.Compare(r[:len(x.ToData)], x.ToData) <= 0
		return in == (x.Op == expr.CmpOpEq), nil
	case *expr.Counter:
		return true, nil
	}
	return false, fmt.Errorf("%w: %T", errUnsupported, e)
}

func compare(op expr.CmpOp, c int) (bool, error) {
	switch op {
	case expr.CmpOpEq:
		return c == 0, nil
	case expr.CmpOpNeq:
		return c != 0, nil
	case expr.CmpOpLt:
		return c < 0, nil
	case expr.CmpOpLte:
		return c <= 0, nil
	case expr.CmpOpGt:
		return c > 0, nil
	case expr.CmpOpGte:
		return c >= 0, nil
	}
	return false, fmt.Errorf("%w: cmp op %d", errUnsupported, op)
}

// lookup matches the key in the source registers against a set. For a
// verdict map the element's verdict comes back.
func (m *machine) lookup(x *expr.Lookup) (verdictResult, bool, string, error) {
	set, err := m.rs.set(x.SetName)
	if err != nil {
		return verdictResult{}, false, "", err
	}
	src, err := m.reg(x.SourceRegister)
	if err != nil {
		return verdictResult{}, false, "", err
	}
	var val []byte
	found := false
	for k, v := range set {
		if len(k) <= len(src) && string(src[:len(k)]) == k {
			val, found = v, true
			break
		}
	}
	if x.Invert {
		found = !found
	}
	if !found {
		return verdictResult{}, false, "", nil
	}
	text := "@" + x.SetName
	if x.IsDestRegSet && x.DestRegister == 0 {
		kind, chain := dataplane.DecodeVerdict(val)
		return verdictResult{kind: kind, chain: chain, ok: true}, true, "vmap " + text + ": " + verdictText(kind, chain), nil
	}
	return verdictResult{}, true, "in " + text, nil
}

func verdictText(kind expr.VerdictKind, chain string) string {
	switch kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictJump:
		return "jump " + chain
	case expr.VerdictGoto:
		return "goto " + chain
	case expr.VerdictContinue:
		return "continue"
	}
	return fmt.Sprintf("verdict %d", kind)
}
