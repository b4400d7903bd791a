package app

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
)

// TestStoreHealthCountsFromRun: however long Start takes (its own reads
// are answered, or it fails), the store is not refused before the probes
// run; from Run on, a store silent for longer than the bound is.
func TestStoreHealthCountsFromRun(t *testing.T) {
	const every, bound = 200 * time.Millisecond, 3 * time.Second
	clk := clock.NewFake(time.Now())
	h := newStoreHealth(func(context.Context) error { return errors.New("etcd does not answer") }, every, bound, testkit.Logger(t))
	h.clock = clk
	h.lastOK = clk.Now()

	clk.Add(2 * bound) // a slow Start
	if err := h.check(); err != nil {
		t.Fatalf("refused before the probes run, %s into Start: %v", 2*bound, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := clk.WaitForAfterCalls(wctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := h.check(); err != nil {
		t.Fatalf("refused at the first probe: %v", err)
	}
	// The probes keep failing: within the bound the store is still used,
	// beyond it refused.
	var calls uint64 = 1
	step := func(d time.Duration) {
		t.Helper()
		clk.Add(d)
		calls++
		if err := clk.WaitForAfterCalls(wctx, calls); err != nil {
			t.Fatal(err)
		}
	}
	step(bound - every)
	if err := h.check(); err != nil {
		t.Fatalf("refused %s after Run began, bound %s: %v", bound-every, bound, err)
	}
	step(2 * every)
	err := h.check()
	t.Logf("a Start of %s: not refused; failing probes from Run on: refused after %s (bound %s): %v", 2*bound, bound+every, bound, err)
	if err == nil {
		t.Fatalf("not refused %s after Run began with every probe failing, bound %s", bound+every, bound)
	}
}
