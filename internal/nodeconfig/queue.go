package nodeconfig

import (
	"context"
	"sync"
)

// queue holds the nodes waiting to be built, each at most once, and never
// hands out a node that is being built: a node changed again while a
// worker builds it is queued again when that build ends.
type queue struct {
	mu    sync.Mutex
	order []string
	state map[string]uint8
	wake  chan struct{}
}

const (
	queued   uint8 = 1 // in order
	building uint8 = 2 // taken by a worker
	again    uint8 = 3 // taken, and changed since
)

func (q *queue) init() {
	q.state = map[string]uint8{}
	q.wake = make(chan struct{}, 1)
}

// add queues node unless it is queued already.
func (q *queue) add(node string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch q.state[node] {
	case queued, again:
		return
	case building:
		q.state[node] = again
		return
	}
	q.state[node] = queued
	q.order = append(q.order, node)
	q.signal()
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take waits for a queued node and marks it building; false when ctx ends.
func (q *queue) take(ctx context.Context) (string, bool) {
	for {
		q.mu.Lock()
		if len(q.order) > 0 {
			node := q.order[0]
			q.order[0] = ""
			q.order = q.order[1:]
			q.state[node] = building
			if len(q.order) > 0 {
				q.signal() // wake the next worker
			}
			q.mu.Unlock()
			return node, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-ctx.Done():
			return "", false
		}
	}
}

// done ends node's build and queues it again if it changed meanwhile.
func (q *queue) done(node string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state[node] == again {
		q.state[node] = queued
		q.order = append(q.order, node)
		q.signal()
		return
	}
	delete(q.state, node)
}

// len counts the nodes queued or being built.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.state)
}
