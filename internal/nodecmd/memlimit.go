package nodecmd

import (
	"context"
	"log/slog"

	"github.com/meshca/meshca/internal/agent"
)

// The agent's soft memory limit (runtime/debug.SetMemoryLimit). Without
// one the Go runtime lets the heap grow to twice what is live before it
// collects, and keeps what it freed for a while: an agent serving 100
// identities, about 5 MiB live, held 20-24 MiB of anonymous memory after a
// renewal of all of them, most of it garbage of the SDS updates. With the
// limit the collector runs earlier when memory nears it: 14-15 MiB
// anonymous, for a collector that takes 18-20 % of the agent's CPU during
// a burst of renewals instead of 5-6 % (gctrace, agentcost), and nothing
// while the agent is idle, since it then allocates next to nothing. The
// runtime's own memory (about 9 MiB: metadata, stacks, freed pages not yet
// returned) counts towards the limit, so the heap has about 3 MiB plus
// 64 KiB per identity, against a live heap of about 3 MiB plus 20-30 KiB
// per identity (measured): the limit grows with what the agent holds. If
// the live heap ever reached it, the runtime caps the collector at half
// the CPU rather than let the agent stall. GOMEMLIMIT, when set, replaces
// it.
const (
	memoryBase        = 12 << 20
	memoryPerIdentity = 64 << 10
	// The bundle and CRL are held a few times over: in the agent, in each
	// SDS snapshot and in the encoded answers.
	memoryPerBundleByte = 4
)

// memoryLimit is the agent's soft memory limit while it holds st.
func memoryLimit(st agent.State) int64 {
	return memoryBase + int64(len(st.SVIDs))*memoryPerIdentity + memoryPerBundleByte*int64(len(st.BundlePEM)+len(st.CRLPEM))
}

// stateSource is the agent, as the memory limit follows it.
type stateSource interface {
	// State returns the current state and a channel closed at the next
	// change.
	State() (agent.State, <-chan struct{})
}

// followMemoryLimit sets the limit with set (debug.SetMemoryLimit) at
// start and whenever it changes, until ctx ends.
func followMemoryLimit(ctx context.Context, a stateSource, set func(int64) int64, log *slog.Logger) error {
	var last int64
	for {
		st, changed := a.State()
		if limit := memoryLimit(st); limit != last {
			set(limit)
			if last == 0 {
				log.Info("memory limit set; GOMEMLIMIT replaces it", "limit_bytes", limit)
			}
			last = limit
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
