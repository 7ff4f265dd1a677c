package cluster

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Forget removes node from the cluster for good: every allocation in its
// blocks is dropped and its blocks deleted (each with a compare-and-swap
// on the block's revision, so a write that races it makes it retry), and
// its node key goes. Only for a node that is gone: its containers'
// addresses become free for other nodes. It returns how many addresses and
// blocks it dropped.
func Forget(ctx context.Context, cli *clientv3.Client, node string) (addrs, blocks int, err error) {
	for attempt := 0; attempt < MaxRetries; attempt++ {
		all, _, err := ListBlocks(ctx, cli)
		if err != nil {
			return 0, 0, err
		}
		var ws []blockWrite
		n := 0
		for p, rb := range all {
			if rb.b.Node == node {
				ws = append(ws, blockWrite{cidr: p, rev: rb.rev})
				n += len(rb.b.Allocs)
			}
		}
		if len(ws) > 0 {
			if _, err := commit(ctx, cli, ws); errors.Is(err, ErrConflict) {
				continue
			} else if err != nil {
				return 0, 0, err
			}
		}
		if _, err := cli.Delete(ctx, nodesPrefix+node); err != nil {
			return n, len(ws), err
		}
		return n, len(ws), nil
	}
	return 0, 0, fmt.Errorf("node %s's blocks kept changing; is its pierd still running?", node)
}

// Nodes returns the names of the nodes holding a lease now.
func Nodes(ctx context.Context, cli *clientv3.Client) ([]string, error) {
	resp, err := cli.Get(ctx, nodesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key[len(nodesPrefix):]))
	}
	return out, nil
}
