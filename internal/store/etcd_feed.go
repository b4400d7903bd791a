package store

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdRewatchDelay is the pause before watching again after the watch
// failed other than by compaction.
const etcdRewatchDelay = 200 * time.Millisecond

// watch feeds s's subscribers from the etcd watch on P/feed, starting at
// revision from. Every commit of every replica puts P/feed once, so its
// revisions are the commits in commit order, and its values carry the
// same changes a bbolt commit hands over. The client resumes the watch
// from the last revision it delivered after a lost connection; when that
// revision was compacted meanwhile, every subscriber gets a Resync and the
// watch starts again from the present.
func (e *etcdStore) watch(ctx context.Context, s *Store, from int64) {
	defer close(e.done)
	next := from
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := e.cli.Watch(wctx, e.feedKey(), clientv3.WithRev(next))
		failed := true
		for wr := range wch {
			if wr.CompactRevision != 0 {
				e.log.Warn("etcd feed revision compacted: resync", logRevision, next, logCompacted, wr.CompactRevision)
				if rev, ok := e.resync(ctx, s); ok {
					next, failed = rev+1, false
				}
				break
			}
			if err := wr.Err(); err != nil {
				e.log.Warn("etcd watch failed", logRevision, next, logErr, err)
				break
			}
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var rec feedRecord
				if err := json.Unmarshal(ev.Kv.Value, &rec); err != nil {
					e.log.Warn("unreadable etcd feed record: resync", logRevision, ev.Kv.ModRevision, logErr, err)
					s.feed.resync(0)
				} else {
					// Before the delivery: a subscriber that sees the
					// batch sees the new NodesVersion too.
					if slices.ContainsFunc(rec.Changes, func(c Change) bool { return c.Kind == KindNode }) {
						s.nodesVersion.Add(1)
					}
					s.feed.deliverAt(rec.Last, rec.Changes)
				}
				next = ev.Kv.ModRevision + 1
				e.advance(ev.Kv.ModRevision)
			}
		}
		cancel()
		if failed && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-e.clock.After(etcdRewatchDelay):
			}
		}
	}
}

// resync reads the present audit Seq and revision, turns every
// subscription into a Resync, and returns that revision.
func (e *etcdStore) resync(ctx context.Context, s *Store) (int64, bool) {
	seq, rev, err := e.lastSeq(ctx, 0)
	if err != nil {
		e.log.Warn("etcd resync failed", logErr, err)
		return 0, false
	}
	s.nodesVersion.Add(1)
	s.feed.resync(seq)
	e.advance(rev)
	return rev, true
}

// deliverAt hands over one commit whose last audit Seq is last. Commits
// come from the watch in commit order, so none waits for another; one
// already covered by a resync is dropped.
func (f *feed) deliverAt(last uint64, changes []Change) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if last <= f.delivered {
		return
	}
	f.deliver(last, changes)
}

// resync tells every subscription that changes may have been missed: its
// next Batch is a Resync with Seq at least seq.
func (f *feed) resync(seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delivered = max(f.delivered, seq)
	f.pos++
	for _, s := range f.subs {
		s.markResync(f.delivered, f.pos)
	}
}

func (s *Subscription) markResync(seq, pos uint64) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.seq, s.pos = max(s.seq, seq), max(s.pos, pos)
	s.pending, s.index, s.resync = nil, nil, true
	s.mu.Unlock()
	s.wake()
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func sortStrings(s []string) { slices.Sort(s) }
