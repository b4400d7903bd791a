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

// DefaultReplicaTTL is how long a replica's registration outlives the
// replica on etcd when it stops without deregistering (killed, cut off):
// the TTL of the lease its key is attached to.
const DefaultReplicaTTL = 10 * time.Second

// Log attribute keys of replica registration.
const (
	logReplica = "replica"
	logXDS     = "xds"
	logTTL     = "ttl"
	logKey     = "key"
)

// replicaRetry is the pause before registering again after etcd refused or
// the lease was lost.
const replicaRetry = time.Second

// Replica is one meshca server sharing the store, as nodes should reach it.
// It is not a record: it is not audited, not fed, not copied by migration.
type Replica struct {
	ID    string    `json:"id"`    // unique per running process
	XDS   string    `json:"xds"`   // the xDS address nodes should use, host:port
	Since time.Time `json:"since"` // when the process registered
}

func (r Replica) check() error {
	if r.ID == "" || strings.ContainsAny(r.ID, "/\x00") {
		return fmt.Errorf("%w: replica id %q (want a non-empty name without / or NUL)", ErrInvalid, r.ID)
	}
	if r.XDS == "" {
		return fmt.Errorf("%w: replica %s has no xDS address", ErrInvalid, r.ID)
	}
	return nil
}

// RunReplica registers r as a replica serving this store until ctx ends,
// then removes it. On etcd the registration is the key P/replicas/<ID>
// attached to a lease of EtcdConfig.ReplicaTTL that this call keeps alive:
// if the process dies the key goes when the lease expires; if the lease is
// lost (etcd unreachable for longer than the TTL) it registers again as
// soon as etcd answers. On bbolt it is the one local replica, kept in
// memory. registered, when set, is called after each registration, once
// Replicas lists r. It returns nil when ctx ends, an error only for an
// invalid r.
func (s *Store) RunReplica(ctx context.Context, r Replica, registered func()) error {
	if err := r.check(); err != nil {
		return err
	}
	if registered == nil {
		registered = func() {}
	}
	if s.etcd == nil {
		s.localReplica.Store(&r)
		registered()
		<-ctx.Done()
		s.localReplica.CompareAndSwap(&r, nil)
		return nil
	}
	return s.etcd.runReplica(ctx, r, registered)
}

// Replicas lists the replicas registered now, by ID. On bbolt it is the
// local one, once RunReplica has started.
func (s *Store) Replicas(ctx context.Context) ([]Replica, error) {
	if s.etcd == nil {
		if r := s.localReplica.Load(); r != nil {
			return []Replica{*r}, nil
		}
		return nil, nil
	}
	return s.etcd.replicas(ctx)
}

func (e *etcdStore) replicaPrefix() string       { return e.prefix + "/replicas/" }
func (e *etcdStore) replicaKey(id string) string { return e.replicaPrefix() + id }

func (e *etcdStore) runReplica(ctx context.Context, r Replica, registered func()) error {
	val, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: replica: %w", err)
	}
	for {
		lease, err := e.register(ctx, r, string(val))
		if err == nil {
			e.leases.Store(r.ID, lease)
			registered()
			err = e.keepAlive(ctx, lease)
			e.leases.CompareAndDelete(r.ID, lease)
		}
		if ctx.Err() != nil {
			if lease != 0 {
				// Deregister at once rather than after the TTL; the
				// process is stopping, so do not wait long.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				_, _ = e.cli.Revoke(rctx, lease)
				cancel()
			}
			return nil
		}
		e.log.Warn("replica registration lost; registering again", logReplica, r.ID, logErr, err)
		select {
		case <-ctx.Done():
			return nil
		case <-e.clock.After(replicaRetry):
		}
	}
}

// register grants a lease and puts the replica's key on it.
func (e *etcdStore) register(ctx context.Context, r Replica, val string) (clientv3.LeaseID, error) {
	grant, err := e.cli.Grant(ctx, int64(e.replicaTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	if _, err := e.cli.Put(ctx, e.replicaKey(r.ID), val, clientv3.WithLease(grant.ID)); err != nil {
		return grant.ID, fmt.Errorf("put %s: %w", e.replicaKey(r.ID), err)
	}
	e.log.Info("replica registered", logReplica, r.ID, logXDS, r.XDS, logTTL, e.replicaTTL)
	return grant.ID, nil
}

// keepAlive keeps the lease alive until ctx ends or the lease is lost.
func (e *etcdStore) keepAlive(ctx context.Context, lease clientv3.LeaseID) error {
	ch, err := e.cli.KeepAlive(ctx, lease)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	for range ch {
	}
	return fmt.Errorf("lease %x expired or etcd closed the keep-alive", int64(lease))
}

func (e *etcdStore) replicas(ctx context.Context) ([]Replica, error) {
	resp, err := e.cli.Get(ctx, e.replicaPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("store: list replicas: %w", err)
	}
	out := make([]Replica, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r Replica
		if err := json.Unmarshal(kv.Value, &r); err != nil || r.check() != nil {
			e.log.Warn("unreadable replica registration skipped", logKey, string(kv.Key))
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Replica) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}
