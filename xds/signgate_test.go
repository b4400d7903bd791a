package xds

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// waitQueue waits until n CSRs wait at g.
func waitQueue(t *testing.T, g *signGate, n int) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for g.waiting() != n {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%d CSRs waiting, want %d", g.waiting(), n)
		}
	}
}

// TestSignGateFIFO: CSRs that wait for a turn are signed in the order
// they arrived, from whichever nodes; one whose caller leaves while
// waiting is dropped without a turn and the others keep their order.
func TestSignGateFIFO(t *testing.T) {
	const waiters = 12
	g := newSignGate(1, 2*waiters)
	hold, holding := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() { first <- g.do(t.Context(), "n0", func() { close(holding); <-hold }) }()
	select {
	case <-holding:
	case <-time.After(20 * time.Second):
		t.Fatal("the first CSR did not get its turn")
	}

	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
		leave context.CancelFunc
	)
	errs := make([]error, waiters)
	for i := range waiters {
		name := fmt.Sprintf("csr-%02d", i)
		ctx := t.Context()
		if i == 5 {
			ctx, leave = context.WithCancel(ctx)
		}
		wg.Go(func() {
			errs[i] = g.do(ctx, fmt.Sprintf("node-%d", i%3), func() {
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
			})
		})
		waitQueue(t, g, i+1) // arrivals in a known order
	}
	leave()
	waitQueue(t, g, waiters-1)
	close(hold)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}

	var want []string
	for i := range waiters {
		if i != 5 {
			want = append(want, fmt.Sprintf("csr-%02d", i))
		}
	}
	t.Logf("%d CSRs waited behind one, one caller left: signed in order %v", waiters, order)
	if !slices.Equal(order, want) {
		t.Fatalf("signed in order %v, want arrival order %v", order, want)
	}
	if status.Code(errs[5]) != codes.Canceled {
		t.Fatalf("the CSR whose caller left: %v, want Canceled", errs[5])
	}
	if _, abandoned := g.counts(); abandoned != 1 {
		t.Fatalf("abandoned %d, want 1", abandoned)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running != 0 || len(g.perNode) != 0 || len(g.queue) != 0 {
		t.Fatalf("after every CSR: %d gate goroutines, %v admitted, %d waiting; want none", g.running, g.perNode, len(g.queue))
	}
}
