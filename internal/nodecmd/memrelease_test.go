package nodecmd

import (
	"context"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
)

// TestReleaseWhenIdle: the agent returns freed memory once its state has
// been quiet for a second after a change, not during a burst of changes,
// at most once a minute, and not when the heap holds little beyond what
// is live.
func TestReleaseWhenIdle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clk := clock.NewFake(time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC))
	src := &fakeState{changed: make(chan struct{})}
	// The loop has read the state (and the channel of its next change)
	// when it calls State a first time.
	watching := make(chan struct{})
	seen := &seenState{fakeState: src, first: watching}
	var retained atomic.Uint64
	retained.Store(4 << 20)
	released := make(chan time.Time, 10)
	done := make(chan error, 1)
	go func() {
		done <- releaseWhenIdle(ctx, seen, clk, retained.Load, func() { released <- clk.Now() })
	}()
	<-watching
	var calls uint64
	// change applies a change of state and waits until the loop waits
	// for quiet again.
	change := func(v uint64) {
		t.Helper()
		src.set(agent.State{Version: v})
		calls++
		if err := clk.WaitForAfterCalls(ctx, calls); err != nil {
			t.Fatal(err)
		}
	}
	none := func(what string) {
		t.Helper()
		if len(released) != 0 {
			t.Fatalf("%s: memory released at %s", what, <-released)
		}
	}
	start := clk.Now()

	// A burst: each change within the second restarts the wait.
	change(1)
	for v := uint64(2); v <= 5; v++ {
		clk.Add(500 * time.Millisecond)
		change(v)
	}
	none("during a burst")
	clk.Add(releaseQuiet)
	var first time.Time
	select {
	case first = <-released:
	case <-ctx.Done():
		t.Fatal("memory never released after the burst")
	}
	if got := first.Sub(start); got != 2*time.Second+releaseQuiet {
		t.Fatalf("released %s after the burst began, want %s", got, 2*time.Second+releaseQuiet)
	}

	// A renewal 10 s later: quiet after a second, but the minute since
	// the last release is not over.
	clk.Add(10 * time.Second)
	change(6)
	clk.Add(releaseQuiet)
	// The next change proves the loop went round without releasing.
	change(7)
	none("within the minute")
	clk.Set(first.Add(releaseEvery))
	select {
	case at := <-released:
		if at.Sub(first) != releaseEvery {
			t.Fatalf("second release %s after the first, want %s", at.Sub(first), releaseEvery)
		}
	case <-ctx.Done():
		t.Fatal("memory never released once the minute was over")
	}

	// Little beyond the live heap: nothing to release.
	retained.Store(releaseAbove / 2)
	clk.Add(2 * releaseEvery)
	change(8)
	clk.Add(releaseQuiet)
	change(9)
	none("with little retained")

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("released once after a burst of 5 changes (%s after it began), then no sooner than %s later; never with %d KiB retained",
		first.Sub(start), releaseEvery, releaseAbove/2>>10)
}

// seenState is a state source that says when it is first read.
type seenState struct {
	*fakeState
	first chan struct{}
	once  sync.Once
}

func (s *seenState) State() (agent.State, <-chan struct{}) {
	st, ch := s.fakeState.State()
	s.once.Do(func() { close(s.first) })
	return st, ch
}

var sink []byte

// TestHeapRetainedCountsGarbage: heapRetained is small once memory is
// released and counts the garbage made since.
func TestHeapRetainedCountsGarbage(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	debug.FreeOSMemory()
	before := heapRetained()
	for range 64 {
		sink = make([]byte, 64<<10)
	}
	sink = nil
	after := heapRetained()
	if after < before+3<<20 {
		t.Fatalf("heap retained %d KiB after 4 MiB of garbage, %d KiB before", after>>10, before>>10)
	}
	debug.FreeOSMemory()
	released := heapRetained()
	if released >= after-3<<20 {
		t.Fatalf("heap retained %d KiB once released, %d KiB before", released>>10, after>>10)
	}
	t.Logf("heap retained beyond live: %d KiB released, %d KiB after 4 MiB of garbage, %d KiB released again", before>>10, after>>10, released>>10)
}
