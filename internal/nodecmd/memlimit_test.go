package nodecmd

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/agent"
)

// fakeState is an agent whose state the test sets.
type fakeState struct {
	mu      sync.Mutex
	st      agent.State
	changed chan struct{}
}

func (f *fakeState) State() (agent.State, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st, f.changed
}

func (f *fakeState) set(st agent.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
	close(f.changed)
	f.changed = make(chan struct{})
}

// TestMemoryLimitFollowsIdentities: the agent's soft memory limit is set
// at start and follows the identities it holds and the size of the bundle
// and CRL, and is not set again while they do not change it.
func TestMemoryLimitFollowsIdentities(t *testing.T) {
	src := &fakeState{changed: make(chan struct{})}
	limits := make(chan int64, 10)
	set := func(l int64) int64 { limits <- l; return 0 }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- followMemoryLimit(ctx, src, set, slog.New(slog.DiscardHandler)) }()

	next := func(want int64) {
		t.Helper()
		select {
		case got := <-limits:
			if got != want {
				t.Fatalf("limit %d, want %d", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("limit never set to %d", want)
		}
	}
	next(12 << 20)
	hundred := agent.State{SVIDs: make([]agent.SVID, 100), Version: 1}
	src.set(hundred)
	next(12<<20 + 100*64<<10)
	// A change that keeps the limit (a renewal) sets nothing; the next
	// one that moves it (a bigger CRL) does.
	hundred.Version = 2
	src.set(hundred)
	hundred.Version, hundred.CRLPEM = 3, make([]byte, 1<<20)
	src.set(hundred)
	next(12<<20 + 100*64<<10 + 4<<20)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(limits) != 0 {
		t.Fatalf("the limit was set again without a change: %d", <-limits)
	}
	t.Logf("soft memory limit: %d MiB with no identity, %.2f MiB with 100", memoryLimit(agent.State{})>>20, float64(memoryLimit(agent.State{SVIDs: make([]agent.SVID, 100)}))/(1<<20))
}
