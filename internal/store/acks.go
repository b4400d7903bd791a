package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// NodeAcks is one replica's report of the xDS nodes connected to it, for
// a CA rotation led by another replica to count them. Like Replica it is
// not a record: not audited, not fed, not copied by migration; on etcd it
// lives on the lease of the replica's registration and goes with it.
type NodeAcks struct {
	Replica string `json:"replica"`
	// Version names the CA set the replica's nodes were sent (the
	// reporter's choice of fingerprint): a report of another version than
	// the reader's says nothing about the bundle the reader waits for.
	// "" means the replica is registered but has not reported.
	Version string `json:"version"`
	// Seq is how far the replica had followed the store when it counted
	// (Store.FeedSeq): every commit up to it had reached its nodes'
	// configuration.
	Seq       uint64    `json:"seq"`
	Connected int       `json:"connected"`
	Pending   int       `json:"pending"` // connected nodes that have not acknowledged what was last pushed to them
	At        time.Time `json:"at"`      // when the replica counted
}

// PutNodeAcks publishes r as the report of replica r.Replica, which must
// be registered by RunReplica in this process. On etcd it is the key
// P/acks/<ID> on the lease of that registration, so that it expires with
// the replica; it fails with ErrNotRegistered while the registration is
// not in place (not yet, or lost until RunReplica registers again). On
// bbolt, with one process and nobody else to count, it does nothing.
func (s *Store) PutNodeAcks(ctx context.Context, r NodeAcks) error {
	if s.etcd == nil {
		return nil
	}
	return s.etcd.putNodeAcks(ctx, r)
}

// NodeAcks returns one entry per replica registered now, by ID: its last
// report, or only its ID when it has none (Version ""). It reads the
// registrations and the reports in one etcd transaction. On bbolt it
// returns nothing: the one process counts its own nodes.
func (s *Store) NodeAcks(ctx context.Context) ([]NodeAcks, error) {
	if s.etcd == nil {
		return nil, nil
	}
	return s.etcd.nodeAcks(ctx)
}

func (e *etcdStore) acksPrefix() string       { return e.prefix + "/acks/" }
func (e *etcdStore) acksKey(id string) string { return e.acksPrefix() + id }

func (e *etcdStore) putNodeAcks(ctx context.Context, r NodeAcks) error {
	v, ok := e.leases.Load(r.Replica)
	if !ok {
		return fmt.Errorf("%w: replica %q", ErrNotRegistered, r.Replica)
	}
	val, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: node acks: %w", err)
	}
	if _, err := e.cli.Put(ctx, e.acksKey(r.Replica), string(val), clientv3.WithLease(v.(clientv3.LeaseID))); err != nil {
		return fmt.Errorf("store: put node acks of replica %s: %w", r.Replica, err)
	}
	return nil
}

func (e *etcdStore) nodeAcks(ctx context.Context) ([]NodeAcks, error) {
	resp, err := e.cli.Txn(ctx).Then(
		clientv3.OpGet(e.replicaPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(e.acksPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("store: read node acks: %w", err)
	}
	reports := map[string]NodeAcks{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var r NodeAcks
		if err := json.Unmarshal(kv.Value, &r); err != nil || r.Replica == "" {
			e.log.Warn("unreadable node acks skipped", logKey, string(kv.Key))
			continue
		}
		reports[r.Replica] = r
	}
	var out []NodeAcks
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		id := strings.TrimPrefix(string(kv.Key), e.replicaPrefix())
		r, ok := reports[id]
		if !ok {
			r = NodeAcks{Replica: id}
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b NodeAcks) int { return strings.Compare(a.Replica, b.Replica) })
	return out, nil
}
