package agent_test

import (
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// inFlight counts the CSRs a server is answering at once. Each is held
// while more may come: until limit are in flight (or all expected have
// arrived), then for window more, or until one more than limit is in flight
// (an agent over its cap, seen doing so; every CSR an uncapped agent sends
// at once arrives well within the window).
type inFlight struct {
	limit, expected int
	window          time.Duration

	mu              sync.Mutex
	now, peak, seen int
	changed         chan struct{} // closed and replaced at each arrival
}

func (f *inFlight) hold() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now++
	f.seen++
	f.peak = max(f.peak, f.now)
	f.broadcast()
	guard := time.After(waitLimit) // never hold a call forever
	var window <-chan time.Time
	for f.now <= f.limit {
		if window == nil && (f.now == f.limit || f.seen == f.expected) {
			window = time.After(f.window)
		}
		ch := f.changed
		f.mu.Unlock()
		expired := false
		select {
		case <-ch:
		case <-window:
			expired = true
		case <-guard:
			expired = true
		}
		f.mu.Lock()
		if expired {
			break
		}
	}
	f.now--
}

func (f *inFlight) broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// TestAgentCapsCSRsInFlight: an agent given 50 identities at once (its
// start, or a CA switch that re-keys every identity) has never more than
// Config.MaxSigning CSRs at meshca at once, uses all of them (the identities
// are signed in parallel, not one by one), and ends with all 50.
func TestAgentCapsCSRsInFlight(t *testing.T) {
	const identities = 50
	var assigned []nodeapi.AssignedIdentity
	for i := range identities {
		name := fmt.Sprintf("svc-%02d", i)
		assigned = append(assigned, nodeapi.AssignedIdentity{Name: name, SPIFFEID: idName(name)})
	}
	counter := &inFlight{limit: agent.DefaultMaxSigning, expected: identities, window: 100 * time.Millisecond, changed: make(chan struct{})}
	l := &lyingMeshca{identities: assigned, ca: testkit.NewCA(t, pkix.Name{CommonName: "meshca"}, time.Now().Add(24*time.Hour), nil),
		before: counter.hold}
	conn := l.start(t)
	start := time.Now()
	a := startAgent(t, agent.Config{Conn: conn, Node: "n", TrustDomain: td, Clock: clock.NewFake(time.Now()), Logger: slog.New(newLogRecorder(t))})
	waitState(t, a, "a certificate for each of the 50 identities", func(s agent.State) bool { return len(s.SVIDs) == identities })
	counter.mu.Lock()
	peak, seen := counter.peak, counter.seen
	counter.mu.Unlock()
	t.Logf("50 identities at once: at most %d CSRs in flight (cap %d), %d CSRs, all signed in %s", peak, agent.DefaultMaxSigning, seen, time.Since(start).Round(time.Millisecond))
	if peak != agent.DefaultMaxSigning {
		t.Fatalf("at most %d CSRs in flight, want exactly the cap %d", peak, agent.DefaultMaxSigning)
	}
	if seen != identities {
		t.Fatalf("%d CSRs for %d identities", seen, identities)
	}
}
