package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Option changes where a call acts. Without options every call acts in the
// network namespace of the calling OS thread.
type Option func(*config)

type config struct {
	netnsFd int
	keep    func(*nftables.Conn)
}

// InNetNS makes a call act in the network namespace fd refers to; the
// caller keeps ownership of fd.
func InNetNS(fd int) Option { return func(c *config) { c.netnsFd = fd } }

// LeaveOpen makes RemoveElements hand its socket to keep instead of
// closing it. Closing a socket after a transaction that deleted something
// waits for the kernel's release of what was deleted (a grace period); a
// caller with a wait of its own to do meanwhile (DEL deleting the veth)
// closes it after that, when the release is usually done (see
// nat.CloseLater).
func LeaveOpen(keep func(*nftables.Conn)) Option { return func(c *config) { c.keep = keep } }

// release closes conn, or hands it over as LeaveOpen asks.
func release(conn *nftables.Conn, opts []Option) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.keep != nil {
		c.keep(conn)
		return
	}
	closeConn(conn)
}

// dial opens one netlink socket for every batch of a call. Closing it waits
// for the kernel's deferred release of deleted or replaced objects (an RCU
// grace period), so a call closes it once, at its end.
func dial(opts []Option) (*nftables.Conn, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	nopts := []nftables.ConnOption{nftables.AsLasting()}
	if c.netnsFd != 0 {
		nopts = append(nopts, nftables.WithNetNSFd(c.netnsFd))
	}
	conn, err := nftables.New(nopts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return conn, nil
}

// Dial opens a netlink socket where opts say, for readers of the
// installed state (pierctl); close it with CloseConn.
func Dial(opts ...Option) (*nftables.Conn, error) { return dial(opts) }

// CloseConn closes a socket from Dial.
func CloseConn(conn *nftables.Conn) { closeConn(conn) }

// ForwardChains are the base chains of the forward hook, in the order the
// kernel runs them: egress of local pods, then their ingress.
func ForwardChains() []string { return []string{chainForwardEgress, chainForwardIngress} }

// InputChains are the base chains of the input hook (traffic to the node).
func InputChains() []string { return []string{chainInputEgress} }

func closeConn(conn *nftables.Conn) {
	// Every batch was acknowledged before: a close error loses nothing.
	_ = conn.CloseLasting()
}

// IsNotFound reports an nftables object that does not exist.
func IsNotFound(err error) bool { return errors.Is(err, unix.ENOENT) }

func isExist(err error) bool { return errors.Is(err, unix.EEXIST) }

func isBusy(err error) bool { return errors.Is(err, unix.EBUSY) }

// step is one indivisible part of a transaction (a chain with all its
// rules, a chunk of elements): its rough size in the netlink batch and
// its number of messages.
type step struct {
	weight int
	msgs   int
	queue  func(c *nftables.Conn) error
}

// Batch limits. A batch is one sendmsg, whose size the socket's send
// buffer bounds (about 200 KiB by default), and the kernel acknowledges
// each of its messages: the acknowledgements of a few hundred messages
// overflow the receive buffer (ENOBUFS), since each is charged a whole
// socket buffer's overhead. So big changes go in several transactions,
// split between steps only; a chain and its rules always share one.
const (
	ruleWeight    = 400
	elemWeight    = 100
	objectWeight  = 100
	maxBatch      = 128 << 10
	maxMessages   = 96
	elemsPerChunk = 256 // one message per chunk: nested attributes end at 64 KiB
)

// runSteps sends the steps in order, as few transactions as fit.
func runSteps(conn *nftables.Conn, steps []step) error {
	var pending []step
	weight, msgs := 0, 0
	send := func() error {
		if len(pending) == 0 {
			return nil
		}
		for _, s := range pending {
			if err := s.queue(conn); err != nil {
				return err
			}
		}
		pending, weight, msgs = nil, 0, 0
		return conn.Flush()
	}
	for _, s := range steps {
		if len(pending) > 0 && (weight+s.weight > maxBatch || msgs+s.msgs > maxMessages) {
			if err := send(); err != nil {
				return err
			}
		}
		pending = append(pending, s)
		weight += s.weight
		msgs += s.msgs
	}
	return send()
}

// setIDs hands out batch-local set ids, so rules of a batch can refer to
// a set it creates without the library's global id counter, which is not
// safe for concurrent use.
type setIDs struct{ next uint32 }

func (s *setIDs) take() uint32 {
	s.next++
	return 0x4e50_0000 + s.next // "NP": apart from the ids internal/nat uses
}

// chunkElements splits elements into messages of elemsPerChunk.
func chunkElements(els []nftables.SetElement, f func([]nftables.SetElement) error) error {
	for len(els) > 0 {
		n := min(len(els), elemsPerChunk)
		if err := f(els[:n]); err != nil {
			return err
		}
		els = els[n:]
	}
	return nil
}

// DecodeVerdict reads a verdict map element's data: the verdict code and
// the chain it jumps or goes to.
func DecodeVerdict(val []byte) (expr.VerdictKind, string) {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return 0, ""
	}
	ad.ByteOrder = binary.BigEndian
	var kind expr.VerdictKind
	var chain string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			kind = expr.VerdictKind(int32(ad.Uint32()))
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	return kind, chain
}

// queueChain creates (or empties) a chain and fills it.
func queueChain(c *nftables.Conn, ch *nftables.Chain, rules []rule) {
	c.AddChain(ch)
	c.FlushChain(ch)
	for _, r := range rules {
		c.AddRule(r.nftRule(ch))
	}
}

func regularChain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: table()}
}

func chainStep(name string, rules []rule) step {
	return step{weight: objectWeight + ruleWeight*len(rules), msgs: 2 + len(rules), queue: func(c *nftables.Conn) error {
		queueChain(c, regularChain(name), rules)
		return nil
	}}
}
