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
// while more may come: until one more than limit are in flight (an agent
// over its cap, seen doing so) or for window after the last one arrived
// (every CSR an uncapped agent sends at once arrives well within it).
type inFlight struct {
	limit  int
	window time.Duration

	mu              sync.Mutex
	now, peak, seen int
	changed         chan struct{} // closed and replaced at each arrival
}

func (f *inFlight) hold() {
	f.mu.Lock()
	f.now++
	f.seen++
	f.peak = max(f.peak, f.now)
	f.broadcast()
	for f.now <= f.limit {
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
			f.mu.Lock()
			continue
		case <-time.After(f.window):
		}
		f.mu.Lock()
		break
	}
	f.now--
	f.mu.Unlock()
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
	counter := &inFlight{limit: agent.DefaultMaxSigning, window: 100 * time.Millisecond, changed: make(chan struct{})}
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
