package xds

import (
	"context"
	"slices"
	"sync"

	"google.golang.org/grpc/status"
)

// Defaults of Limits.MaxSigning (or twice GOMAXPROCS, if more) and
// MaxSignQueue. Signing a CSR is a few ms of CPU and a share of a store
// commit, and the store groups concurrent commits into one fsync: with a
// bound near the core count (4 on 2 cores) each group held a few CSRs, and
// 10,000 of them took 3× as long as with 32 (docs/benchmarks.md, "Node
// agents"). What waits, 32 + 256, is still a few seconds of work, well
// within an agent's call deadline.
const (
	DefaultMaxSigning   = 32
	DefaultMaxSignQueue = 256
)

// maxSignPerNode bounds one node's CSRs signing or waiting: an agent sends
// a few at a time (internal/agent), and one node must not take the whole
// queue from the others.
const maxSignPerNode = 16

// signGate bounds agent CSR signing. A CA switch makes every agent re-key
// every identity at once: without a bound, thousands of CSRs are signed
// at the same time, each slower than the agents' call timeout, and the
// agents retry while meshca signs and commits for callers that have gone.
// A CSR signs when one of max turns is free, waits for one (while its
// caller waits) when fewer than queue are waiting, and is refused at once
// otherwise. Waiting CSRs are signed in the order they arrived.
//
// The signing itself runs on the gate's own goroutines, at most max, each
// taking the next waiting CSR when it is done with one and ending when
// none waits: signing a CSR (verification, lint, commit) grows a
// goroutine's stack to tens of KiB, and a gRPC call starts on a fresh
// goroutine, so that signing on the caller's goroutine copied its stack
// several times per CSR. Safe for concurrent use.
type signGate struct {
	max, maxQueue int

	mu      sync.Mutex
	running int            // gate goroutines, each signing a CSR or about to
	queue   []*signTurn    // waiting, oldest first
	perNode map[string]int // admitted CSRs (waiting or signing) by node

	refused, abandoned int64 // under mu
}

// signTurn is one admitted CSR.
type signTurn struct {
	ctx  context.Context
	node string
	sign func()
	done chan struct{} // closed once sign returned, or the turn was dropped
	err  error         // the caller's end, when it left before sign started; set before done closes
}

func newSignGate(max, queue int) *signGate {
	return &signGate{max: max, maxQueue: queue, perNode: map[string]int{}}
}

// do admits a CSR of node and returns once sign has run on one of the
// gate's goroutines, or with a gRPC status error, sign not run:
// ResourceExhausted when the queue (or the node's share of it) is full,
// the caller's own end when it went away while waiting.
func (g *signGate) do(ctx context.Context, node string, sign func()) error {
	t := &signTurn{ctx: ctx, node: node, sign: sign, done: make(chan struct{})}
	g.mu.Lock()
	switch {
	case g.perNode[node] >= maxSignPerNode:
		g.refused++
		g.mu.Unlock()
		return errSignBusy
	case g.running < g.max:
		g.running++
		g.perNode[node]++
		g.mu.Unlock()
		go g.work(t)
	case len(g.queue) >= g.maxQueue:
		g.refused++
		g.mu.Unlock()
		return errSignBusy
	default:
		g.queue = append(g.queue, t)
		g.perNode[node]++
		g.mu.Unlock()
	}
	select {
	case <-t.done:
		return t.err
	case <-ctx.Done():
	}
	g.mu.Lock()
	if i := slices.Index(g.queue, t); i >= 0 {
		g.queue = slices.Delete(g.queue, i, i+1)
		g.forget(node)
		g.abandoned++
		g.mu.Unlock()
		return status.FromContextError(ctx.Err()).Err()
	}
	g.mu.Unlock()
	<-t.done // taken by a gate goroutine: sign sees ctx end and returns
	return t.err
}

// work signs t, then each waiting CSR in turn, and ends when none waits.
func (g *signGate) work(t *signTurn) {
	for t != nil {
		if err := t.ctx.Err(); err != nil {
			// Its caller left as its turn came.
			t.err = status.FromContextError(err).Err()
			g.abandon()
		} else {
			t.sign()
		}
		close(t.done)
		g.mu.Lock()
		g.forget(t.node)
		t = nil
		if len(g.queue) > 0 {
			t = g.queue[0]
			g.queue[0] = nil
			g.queue = g.queue[1:]
		} else {
			g.running--
		}
		g.mu.Unlock()
	}
}

// waiting counts the CSRs waiting for a turn.
func (g *signGate) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.queue)
}

// forget drops one admitted CSR of node; under mu.
func (g *signGate) forget(node string) {
	if g.perNode[node]--; g.perNode[node] <= 0 {
		delete(g.perNode, node)
	}
}

// abandon counts a CSR whose caller went away before it was signed or
// stored.
func (g *signGate) abandon() {
	g.mu.Lock()
	g.abandoned++
	g.mu.Unlock()
}

func (g *signGate) counts() (refused, abandoned int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.refused, g.abandoned
}
