package nodecmd

import (
	"context"
	"runtime/metrics"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

// Once the agent is idle it gives the memory its last burst of work freed
// back to the system (debug.FreeOSMemory: a collection, then every free
// page returned). The Go runtime keeps freed pages for reuse and returns
// them only slowly: after signing and serving 100 certificates the agent
// held 10.4-10.5 MiB of anonymous memory, unchanged 3 s later; released,
// 8.3-8.4 MiB (agentcost, 2026-12-02). A release took 9-10 ms of CPU for
// 5 MiB live and 5 MiB of garbage (a loaded machine), and the pages it
// returns fault in again when reused. So it runs at most once a minute
// (0.02 % of a core at most) whatever the rate of renewals, after the
// agent's state has not changed for a second (a burst of renewals is
// over), and only when more than releaseAbove could be returned.
const (
	releaseQuiet = time.Second
	releaseEvery = time.Minute
	releaseAbove = 1 << 20
)

// releaseWhenIdle calls release after each change of the agent's state
// once the state has been quiet for releaseQuiet and releaseEvery has
// passed since the previous release, when retained (the heap's bytes
// beyond the live ones) is above releaseAbove; until ctx ends.
func releaseWhenIdle(ctx context.Context, a stateSource, clk clock.Clock, retained func() uint64, release func()) error {
	var last time.Time // of the previous release; zero: none yet
	_, changed := a.State()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	quiet:
		for {
			_, changed = a.State()
			wait := releaseQuiet
			if !last.IsZero() {
				wait = max(wait, last.Add(releaseEvery).Sub(clk.Now()))
			}
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			case <-clk.After(wait):
				break quiet
			}
		}
		if retained() > releaseAbove {
			last = clk.Now() // the minute counts from the start of the release
			release()
		}
	}
}

// heapRetained is the heap memory a release could return: the garbage
// (objects beyond what the last collection found live) and free pages not
// yet returned. The gaps of spans that hold live objects stay.
func heapRetained() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}
	metrics.Read(s)
	var held uint64
	for _, x := range s[:2] {
		if x.Value.Kind() == metrics.KindUint64 {
			held += x.Value.Uint64()
		}
	}
	var live uint64
	if s[2].Value.Kind() == metrics.KindUint64 {
		live = s[2].Value.Uint64()
	}
	if held < live {
		return 0
	}
	return held - live
}
