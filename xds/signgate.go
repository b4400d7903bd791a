package xds

import (
	"context"
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
// A CSR signs when one of max slots is free, waits for one (while its
// caller waits) when fewer than queue are waiting, and is refused at once
// otherwise. Safe for concurrent use.
type signGate struct {
	slots chan struct{} // one token per CSR being signed

	mu      sync.Mutex
	waiting int
	perNode map[string]int // admitted CSRs (waiting or signing) by node
	queue   int

	refused, abandoned int64 // under mu
}

func newSignGate(max, queue int) *signGate {
	return &signGate{slots: make(chan struct{}, max), perNode: map[string]int{}, queue: queue}
}

// enter admits a CSR of node: it returns once the CSR may be signed, with
// the function that ends its turn, or a gRPC status error: ResourceExhausted
// when the queue (or the node's share of it) is full, the caller's own end
// when it went away while waiting.
func (g *signGate) enter(ctx context.Context, node string) (func(), error) {
	g.mu.Lock()
	if g.perNode[node] >= maxSignPerNode {
		g.refused++
		g.mu.Unlock()
		return nil, errSignBusy
	}
	select {
	case g.slots <- struct{}{}:
		g.perNode[node]++
		g.mu.Unlock()
		return g.leave(node), nil
	default:
	}
	if g.waiting >= g.queue {
		g.refused++
		g.mu.Unlock()
		return nil, errSignBusy
	}
	g.waiting++
	g.perNode[node]++
	g.mu.Unlock()

	select {
	case g.slots <- struct{}{}:
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
		if err := ctx.Err(); err != nil {
			g.leave(node)()
			g.abandon()
			return nil, status.FromContextError(err).Err()
		}
		return g.leave(node), nil
	case <-ctx.Done():
		g.mu.Lock()
		g.waiting--
		g.forget(node)
		g.abandoned++
		g.mu.Unlock()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// leave returns the function that ends node's turn.
func (g *signGate) leave(node string) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			<-g.slots
			g.mu.Lock()
			g.forget(node)
			g.mu.Unlock()
		})
	}
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
