package store

import (
	"context"
	"errors"
	"sync/atomic"
)

// etcdMaxBatch bounds how many Updates share one etcd Txn. An issuance is
// about five operations (certificate, index, event, counter; the batch adds
// P/feed), so 16 stay within etcd's default 128; a batch that is too large
// anyway is split into lone commits.
const etcdMaxBatch = 16

// etcdPending is one Update waiting for a batch.
type etcdPending struct {
	ctx     context.Context
	attempt func(kv) (commit, error)
	fence   Fence         // zero: unfenced
	done    chan etcdDone // capacity 1
}

type etcdDone struct {
	c   commit
	rev int64 // of the batch's commit when it appended events, else 0
	err error
}

// update is etcd's group commit, as committer is bbolt's: the first Update
// to find no batch in progress starts one, and every Update that arrives
// meanwhile joins the next. A batch runs its functions one after the other
// on one optimistic transaction (each sees the writes of those before it)
// and commits them in one Txn; on a conflict with another replica the
// whole batch runs again. A function that fails or panics is taken out and
// runs alone in its caller's goroutine, like a batch too large for etcd.
// Once queued, an Update waits for its batch: the batch gives up when the
// contexts of all its callers have ended. A batch holds Updates of one
// fence only (WithFence; most have none): a term that ended fails the
// Updates made in it, never those of another.
func (e *etcdStore) update(ctx context.Context, attempt func(kv) (commit, error)) (commit, error) {
	fence, _ := fenceOf(ctx)
	p := &etcdPending{ctx: ctx, attempt: attempt, fence: fence, done: make(chan etcdDone, 1)}
	e.qmu.Lock()
	e.queue = append(e.queue, p)
	if !e.leading {
		e.leading = true
		go e.lead()
	}
	e.qmu.Unlock()
	d := <-p.done
	if errors.Is(d.err, errSolo) {
		var cs []commit
		cs, d.rev, d.err = e.commitLoop(ctx, func(t *etcdTx) ([]commit, error) {
			c, err := attempt(t)
			return []commit{c}, err
		})
		if d.err == nil {
			d.c = cs[0]
		}
	}
	if d.err == nil && d.rev > 0 {
		e.waitFeed(ctx, d.rev)
	}
	return d.c, d.err
}

// lead commits the queue until it is empty.
func (e *etcdStore) lead() {
	for {
		e.qmu.Lock()
		if len(e.queue) == 0 {
			e.leading = false
			e.qmu.Unlock()
			return
		}
		// The longest prefix of the queue with the first one's fence.
		n := 1
		for n < min(len(e.queue), etcdMaxBatch) && e.queue[n].fence == e.queue[0].fence {
			n++
		}
		batch := e.queue[:n:n]
		e.queue = append([]*etcdPending(nil), e.queue[n:]...)
		e.qmu.Unlock()
		e.commitBatch(batch)
	}
}

// commitBatch commits batch, taking out the functions that fail.
func (e *etcdStore) commitBatch(batch []*etcdPending) {
	live := batch[:0:0]
	for _, p := range batch {
		if err := p.ctx.Err(); err != nil {
			p.done <- etcdDone{err: err}
			continue
		}
		live = append(live, p)
	}
	batch = live
	if len(batch) == 0 {
		return
	}
	// The etcd calls end when every caller has given up, or at Close.
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	if f := batch[0].fence; f.key != "" {
		ctx = WithFence(ctx, f)
	}
	remaining := atomic.Int32{}
	remaining.Store(int32(len(batch)))
	for _, p := range batch {
		stop := context.AfterFunc(p.ctx, func() {
			if remaining.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	for len(batch) > 0 {
		failed := -1
		cs, rev, err := e.commitLoop(ctx, func(t *etcdTx) ([]commit, error) {
			failed = -1
			out := make([]commit, 0, len(batch))
			for i, p := range batch {
				c, err := callAttempt(p.attempt, t)
				if err != nil && !errors.Is(err, errConflict) {
					failed = i
				}
				if err != nil {
					return nil, err
				}
				out = append(out, c)
			}
			return out, nil
		})
		if failed >= 0 {
			batch[failed].done <- etcdDone{err: errSolo}
			batch = append(batch[:failed:failed], batch[failed+1:]...)
			continue
		}
		if errors.Is(err, ErrTooLarge) && len(batch) > 1 {
			err = errSolo
		}
		for i, p := range batch {
			d := etcdDone{rev: rev, err: err}
			if err == nil {
				d.c = cs[i]
			}
			p.done <- d
		}
		return
	}
}

// callAttempt runs attempt, turning a panic into errPanicked so that the
// function runs again alone in its caller's goroutine and panics there.
func callAttempt(attempt func(kv) (commit, error), t *etcdTx) (c commit, err error) {
	defer func() {
		if recover() != nil {
			err = errPanicked
		}
	}()
	return attempt(t)
}
