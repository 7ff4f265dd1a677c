package cluster

// The etcd adapter: keys, connection, the node lease, block claims and
// compare-and-swap commits. Allocation policy (alloc.go, block.go) never
// calls etcd directly.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

const (
	keyPrefix    = "/pier/"
	configKey    = keyPrefix + "config"
	nodesPrefix  = keyPrefix + "nodes/"
	blocksPrefix = keyPrefix + "blocks/"
)

// Timings.
const (
	// OpTimeout bounds each etcd operation of a call, so an ADD with etcd
	// down fails within 2 s.
	OpTimeout = 1500 * time.Millisecond
	// LeaseTTL is the node lease's TTL in seconds.
	LeaseTTL = 15
)

// ErrConflict: a compare-and-swap lost (someone else changed a key).
var ErrConflict = errors.New("etcd: a key changed since it was read")

// errNoLease: the node's lease is not (or no longer) ours.
var errNoLease = errors.New("etcd: the node's lease has lapsed")

// EtcdOptions says how to reach etcd.
type EtcdOptions struct {
	Endpoints            []string
	CACert, Cert, KeyPEM string // file paths; empty: no TLS
}

// Connect returns an etcd client. It does not wait for etcd to answer.
func Connect(o EtcdOptions) (*clientv3.Client, error) {
	var tlsConf *tls.Config
	if o.CACert != "" || o.Cert != "" {
		info := transport.TLSInfo{TrustedCAFile: o.CACert, CertFile: o.Cert, KeyFile: o.KeyPEM}
		var err error
		if tlsConf, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
	}
	return clientv3.New(clientv3.Config{
		Endpoints: o.Endpoints, TLS: tlsConf, DialTimeout: 2 * time.Second,
		DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
		Logger: zap.NewNop(),
	})
}

// ParseEndpoints splits a comma-separated URL list.
func ParseEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// InitConfig writes the cluster settings once; an existing, different
// config is an error.
func InitConfig(ctx context.Context, cli *clientv3.Client, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b, _ := json.Marshal(c)
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(configKey), "=", 0)).
		Then(clientv3.OpPut(configKey, string(b))).Else(clientv3.OpGet(configKey)).Commit()
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	cur := resp.Responses[0].GetResponseRange().Kvs[0].Value
	if string(cur) == string(b) {
		return nil
	}
	return fmt.Errorf("the cluster is already initialised with %s", cur)
}

// ReadConfig reads the cluster settings.
func ReadConfig(ctx context.Context, cli *clientv3.Client) (Config, error) {
	var c Config
	resp, err := cli.Get(ctx, configKey)
	if err != nil {
		return c, err
	}
	if len(resp.Kvs) == 0 {
		return c, errors.New("the cluster is not initialised (pierctl cluster init)")
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return c, fmt.Errorf("%s: %w", configKey, err)
	}
	return c, c.Validate()
}

// revBlock is a block with its key's ModRevision.
type revBlock struct {
	b   *Block
	rev int64
}

// ListBlocks reads every block and the revision of the read.
func ListBlocks(ctx context.Context, cli *clientv3.Client) (map[netip.Prefix]revBlock, int64, error) {
	// An unreadable block was never claimed by a pierd: it stays taken (its
	// key exists), so allocation ignores it; the route agent reports it.
	out, _, rev, err := listBlocks(ctx, cli)
	return out, rev, err
}

// listBlocks is ListBlocks that also returns the keys it could not decode,
// with the reason.
func listBlocks(ctx context.Context, cli *clientv3.Client) (map[netip.Prefix]revBlock, map[string]error, int64, error) {
	resp, err := cli.Get(ctx, blocksPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, 0, err
	}
	out := map[netip.Prefix]revBlock{}
	bad := map[string]error{}
	for _, kv := range resp.Kvs {
		b, err := decodeBlock(kv.Key, kv.Value)
		if err != nil {
			bad[string(kv.Key)] = err
			continue
		}
		out[b.CIDR] = revBlock{b, kv.ModRevision}
	}
	return out, bad, resp.Header.Revision, nil
}

// TakenBlocks returns the prefixes of every block key (keys only: a claim
// need not read the allocations of the whole cluster).
func TakenBlocks(ctx context.Context, cli *clientv3.Client) (map[netip.Prefix]bool, error) {
	resp, err := cli.Get(ctx, blocksPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	out := map[netip.Prefix]bool{}
	for _, kv := range resp.Kvs {
		if p, err := ParseBlockKey(string(kv.Key)); err == nil {
			out[p] = true
		}
	}
	return out, nil
}

func decodeBlock(key, val []byte) (*Block, error) {
	var b Block
	if err := json.Unmarshal(val, &b); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	p, err := ParseBlockKey(string(key))
	if err != nil || p != b.CIDR {
		return nil, fmt.Errorf("%s: block %s does not match its key", key, b.CIDR)
	}
	return &b, nil
}

// blockWrite is one block to commit: its new value (nil deletes it) if its
// revision is still rev.
type blockWrite struct {
	cidr netip.Prefix
	b    *Block
	rev  int64
}

// commit writes every block in one transaction, each guarded by its
// revision; it returns the transaction's revision or ErrConflict.
func commit(ctx context.Context, cli *clientv3.Client, ws []blockWrite) (int64, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, w := range ws {
		k := BlockKey(w.cidr)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", w.rev))
		if w.b == nil {
			ops = append(ops, clientv3.OpDelete(k))
			continue
		}
		v, err := json.Marshal(w.b)
		if err != nil {
			return 0, err
		}
		ops = append(ops, clientv3.OpPut(k, string(v)))
	}
	resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, ErrConflict
	}
	return resp.Header.Revision, nil
}

// nodeRecord is /pier/nodes/<name>.
type nodeRecord struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	IP6  netip.Addr `json:"ip6,omitzero"` // --node-ip6: next hop of its IPv6 blocks
}

// membership keeps the node's key alive under a lease and re-registers
// when the lease lapses (etcd down longer than the TTL, a paused node).
type membership struct {
	cli  *clientv3.Client
	node nodeRecord
	log  *slog.Logger

	ttl int64 // lease TTL in seconds (0: LeaseTTL)

	mu    sync.Mutex // guards lease
	lease clientv3.LeaseID
}

func (m *membership) key() string { return nodesPrefix + m.node.Name }

func (m *membership) current() clientv3.LeaseID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease
}

// register grants a lease and puts the node key under it.
func (m *membership) register(ctx context.Context) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	ttl := m.ttl
	if ttl <= 0 {
		ttl = LeaseTTL
	}
	g, err := m.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	v, _ := json.Marshal(m.node)
	if _, err := m.cli.Put(ctx, m.key(), string(v), clientv3.WithLease(g.ID)); err != nil {
		return nil, err
	}
	ka, err := m.cli.KeepAlive(context.WithoutCancel(ctx), g.ID)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.lease = g.ID
	m.mu.Unlock()
	m.log.Info("node registered", "node", m.node.Name, "lease", fmt.Sprintf("%x", g.ID))
	return ka, nil
}

// run keeps the node registered until ctx ends.
func (m *membership) run(ctx context.Context) {
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ka, err := m.register(rctx)
		cancel()
		if err != nil {
			m.log.Warn("cannot register the node; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for range ka { // drained until the lease is lost or ctx ends
		}
		if ctx.Err() == nil {
			m.log.Warn("node lease lost; registering again")
		}
	}
	if id := m.current(); id != 0 {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = m.cli.Revoke(rctx, id) // best effort: the TTL does it anyway
		cancel()
	}
}

// claim creates block b if nobody holds it and the node's lease is ours.
// It returns the block's revision, or ok=false when the block is taken.
func (m *membership) claim(ctx context.Context, b *Block) (rev int64, ok bool, err error) {
	rev, ok, _, err = m.claimHolder(ctx, b)
	return rev, ok, err
}

// claimHolder is claim that also names the node holding a taken block.
func (m *membership) claimHolder(ctx context.Context, b *Block) (rev int64, ok bool, holder string, err error) {
	v, _ := json.Marshal(b)
	k := BlockKey(b.CIDR)
	resp, err := m.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(k), "=", 0),
		clientv3.Compare(clientv3.LeaseValue(m.key()), "=", m.current()),
	).Then(clientv3.OpPut(k, string(v))).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return 0, false, "", err
	}
	if resp.Succeeded {
		return resp.Header.Revision, true, "", nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return 0, false, "", errNoLease
	}
	var held Block
	_ = json.Unmarshal(kvs[0].Value, &held)
	return 0, false, held.Node, nil
}
