package store

import (
	"errors"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// maxBatch bounds how many Updates share one transaction.
const maxBatch = 1000

// errSolo tells a caller whose function failed inside a shared transaction
// to run it again alone, so that it gets its own error and the others are
// not held back by it.
var errSolo = errors.New("store: run alone")

// committer is meshca's group commit. The first Update to find no commit in
// progress starts one; every Update that arrives while a transaction is
// being written and fsync'd joins the next one. A lone caller commits at
// once, with no delay to wait for company, and under load a batch is
// whatever arrived during the previous fsync: the batch size follows the
// load. (bbolt's own DB.Batch holds every batch for MaxBatchDelay unless it
// is full.)
type committer struct {
	db *bolt.DB

	mu      sync.Mutex
	queue   []*pending
	leading bool // a goroutine is committing the queue

	onQueue func() // testing: called after a caller joined the queue
}

type pending struct {
	fn   func(*bolt.Tx) error
	done chan error
}

// run commits fn in a transaction shared with other callers and returns
// once that transaction is durable, or with fn's own error (nothing of it
// written). fn may run more than once.
func (c *committer) run(fn func(*bolt.Tx) error) error {
	p := &pending{fn: fn, done: make(chan error, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, p)
	if !c.leading {
		c.leading = true
		go c.lead()
	}
	c.mu.Unlock()
	if c.onQueue != nil {
		c.onQueue()
	}
	if err := <-p.done; err != errSolo {
		return err
	}
	return c.db.Update(fn)
}

// lead commits the queue until it is empty.
func (c *committer) lead() {
	for {
		c.mu.Lock()
		n := min(len(c.queue), maxBatch)
		if n == 0 {
			c.leading = false
			c.mu.Unlock()
			return
		}
		batch := c.queue[:n:n]
		c.queue = append([]*pending(nil), c.queue[n:]...)
		c.mu.Unlock()
		c.commit(batch)
	}
}

// errPanicked stands for a function that panicked in a shared transaction:
// run alone in its caller's goroutine, it panics there again, where the
// caller (or net/http) can recover.
var errPanicked = errors.New("store: update panicked")

func call(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if recover() != nil {
			err = errPanicked
		}
	}()
	return fn(tx)
}

// commit runs batch in one transaction. A function that fails (or panics)
// is taken out and told to run alone; the transaction is retried without
// it.
func (c *committer) commit(batch []*pending) {
	for len(batch) > 0 {
		failed := -1
		err := c.db.Update(func(tx *bolt.Tx) error {
			for i, p := range batch {
				if err := call(p.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			batch[failed].done <- errSolo
			batch = append(batch[:failed:failed], batch[failed+1:]...)
			continue
		}
		for _, p := range batch {
			p.done <- err
		}
		return
	}
}
