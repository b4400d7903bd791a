package store

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// leaderPrefix is the election's prefix under P: P/leader/<lease> holds a
// Candidate, and the key created first leads.
func (e *etcdStore) leaderPrefix() string { return e.prefix + "/leader" }

// campaign is Campaign on etcd: a session lease of ttl, an election key
// under P/leader, and a watcher that ends the term when the session ends
// or the key goes.
func (e *etcdStore) campaign(ctx context.Context, c Candidate, ttl time.Duration) (*Term, error) {
	if e.closed.Load() {
		return nil, ErrClosed
	}
	val, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("store: encode candidate: %w", err)
	}
	secs := max(int64(math.Ceil(ttl.Seconds())), 1)
	lease, err := e.cli.Grant(ctx, secs)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("store: etcd lease for the leader election: %w", err)
	}
	// The session lives until Resign or Close, not only while ctx does.
	// Its TTL bounds the revocation when it is closed.
	sess, err := concurrency.NewSession(e.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(lease.TTL)), concurrency.WithContext(e.ctx))
	if err != nil {
		e.revoke(lease.ID)
		return nil, fmt.Errorf("store: etcd session for the leader election: %w", err)
	}
	el := concurrency.NewElection(sess, e.leaderPrefix())
	if err := el.Campaign(ctx, string(val)); err != nil {
		sess.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("store: etcd leader election: %w", err)
	}
	key, rev := el.Key(), el.Rev()
	wctx, stop := context.WithCancel(e.ctx)
	renewed, err := e.cli.KeepAlive(wctx, lease.ID)
	if err != nil {
		stop()
		sess.Close()
		return nil, fmt.Errorf("store: etcd lease for the leader election: %w", err)
	}
	done := make(chan struct{})
	// From the key's own revision: a deletion since Campaign returned
	// (the lease expired while it waited) is seen too. Without a raft
	// leader the member may be cut off: the watch fails and so does the
	// term.
	wch := e.cli.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev))
	// The lease runs on etcd's clock, in real time, and is renewed every
	// third of its TTL: a replica that heard no renewal for two thirds of
	// it gives up the term before etcd can expire the lease and elect
	// another, so that a replica cut off from etcd stops its leader work
	// before the next leader starts (its late writes are fenced anyway).
	quietFor := time.Duration(lease.TTL) * time.Second * 2 / 3
	go func() {
		defer close(done)
		defer stop()
		quiet := time.NewTimer(quietFor)
		defer quiet.Stop()
		for {
			select {
			case <-sess.Done():
				return
			case <-wctx.Done():
				return
			case <-quiet.C:
				e.log.Warn("no lease renewal from etcd: giving up the leader's term", logEtcdPrefix, e.prefix, "quiet_for", quietFor)
				return
			case _, ok := <-renewed:
				if !ok {
					return
				}
				quiet.Reset(quietFor)
			case resp, ok := <-wch:
				if !ok || resp.Err() != nil || resp.Canceled {
					return
				}
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypeDelete {
						return
					}
				}
			}
		}
	}()
	var once sync.Once
	return &Term{
		Fence: Fence{key: key, rev: rev},
		done:  done,
		resign: func(ctx context.Context) error {
			var err error
			once.Do(func() {
				select {
				case <-done:
					// Over already: the key is gone, or etcd has not been
					// heard from; only the lease may be left to revoke.
				default:
					stop()
					if rerr := el.Resign(ctx); rerr != nil {
						err = fmt.Errorf("store: resign: %w", rerr)
					}
				}
				stop()
				// Closing the session revokes its lease (within its TTL),
				// which deletes the key: the next candidate is elected at
				// once.
				sess.Close()
			})
			return err
		},
	}, nil
}

// revoke revokes a lease that no session holds, within a short bound.
func (e *etcdStore) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(e.ctx, DefaultEtcdDialTimeout)
	defer cancel()
	_, _ = e.cli.Revoke(ctx, id) // on failure the lease expires by itself
}

// leader reads the election's current leader: the oldest key under
// P/leader.
func (e *etcdStore) leader(ctx context.Context) (Candidate, bool, error) {
	if e.closed.Load() {
		return Candidate{}, false, ErrClosed
	}
	resp, err := e.cli.Get(ctx, e.leaderPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return Candidate{}, false, fmt.Errorf("store: read the leader from etcd: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return Candidate{}, false, nil
	}
	var c Candidate
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return Candidate{}, false, fmt.Errorf("store: leader record %s: %w", resp.Kvs[0].Key, err)
	}
	return c, true, nil
}
