package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
)

// How a replica on etcd decides that it has lost the store. It probes etcd
// every StoreProbeInterval with a linearizable read bounded by
// StoreProbeTimeout; once its last answered probe is older than
// StoreContactBound it reports not ready and refuses to sign, until a probe
// is answered again. The first probe that fails after the bound also
// closes every node's xDS streams (so within StoreContactBound +
// StoreProbeInterval + StoreProbeTimeout): what they were served can no
// longer be confirmed current, and the nodes go to another replica.
const (
	StoreProbeInterval = time.Second
	StoreProbeTimeout  = 2 * time.Second
	StoreContactBound  = 5 * time.Second
)

// Log attribute keys of the store health.
const (
	logSince = "since_last_contact"
	logBound = "bound"
)

// storeHealth tracks the last round trip to a shared store that succeeded.
// Its clock is the wall clock, not the app's: it measures network round
// trips, which a test's fake clock (moving certificates through their
// lifetimes) does not govern.
type storeHealth struct {
	ping           func(context.Context) error
	every, timeout time.Duration
	bound          time.Duration
	clock          clock.Clock
	log            *slog.Logger
	// onLost, when set before Run, is called on Run's goroutine each time
	// the replica is found to have lost the store.
	onLost func()

	mu     sync.Mutex
	lastOK time.Time
	lost   bool // logged as lost; logged again when it returns
	// running is set when Run begins. Before, Start reads the store on
	// its own, each read bounded and failing Start if unanswered: the
	// bound would only count Start's duration (over 3 s on a loaded
	// machine) as silence, and refuse reads that etcd answers.
	running bool
}

func newStoreHealth(ping func(context.Context) error, every, bound time.Duration, log *slog.Logger) *storeHealth {
	// A probe never outlives the bound: the bound is what the replica
	// promises, however slow etcd is to fail.
	timeout := min(StoreProbeTimeout, bound)
	// Open has just made a round trip.
	clk := clock.Real{}
	return &storeHealth{ping: ping, every: every, timeout: timeout, bound: bound, clock: clk, log: log, lastOK: clk.Now()}
}

// Run probes the store until ctx ends.
func (h *storeHealth) Run(ctx context.Context) error {
	h.mu.Lock()
	h.lastOK, h.running = h.clock.Now(), true // Start's reads were answered
	h.mu.Unlock()
	for {
		next := h.clock.After(h.every)
		pctx, cancel := context.WithTimeout(ctx, h.timeout)
		err := h.ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if h.observe(err) && h.onLost != nil {
			h.onLost()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-next:
		}
	}
}

// observe records a probe's result and reports whether the replica has
// just been found to have lost the store.
func (h *storeHealth) observe(err error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.clock.Now()
	if err == nil {
		if h.lost {
			h.log.Info("etcd answers again: signing resumed", logSince, now.Sub(h.lastOK).Round(time.Millisecond))
			h.lost = false
		}
		h.lastOK = now
		return false
	}
	if since := now.Sub(h.lastOK); since > h.bound && !h.lost {
		h.lost = true
		h.log.Error("etcd unreachable: this replica reports not ready, does not sign and closes its nodes' streams", logSince, since.Round(time.Millisecond), logBound, h.bound, "err", err)
		return true
	}
	return false
}

// check fails with registry.ErrUnavailable once, Run having begun, the
// last answered probe is older than the bound. A nil storeHealth (bbolt:
// the file is local) never fails.
func (h *storeHealth) check() error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	since, running := h.clock.Now().Sub(h.lastOK), h.running
	h.mu.Unlock()
	if !running || since <= h.bound {
		return nil
	}
	return fmt.Errorf("%w: this meshca has had no answer from etcd for %s (limit %s) and does not sign until etcd answers again; use another replica meanwhile",
		registry.ErrUnavailable, since.Round(100*time.Millisecond), h.bound)
}

// gatedIssuer is the authority as the registry's Issuer, refusing to sign
// while the replica has lost the store.
type gatedIssuer struct {
	registry.Issuer
	health *storeHealth
}

func (g gatedIssuer) Issue(ctx context.Context, req ca.Request) (*ca.Issued, string, error) {
	if err := g.health.check(); err != nil {
		return nil, "", err
	}
	return g.Issuer.Issue(ctx, req)
}
