package agent_test

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/testkit"
)

// TestAgentHoldsCSRsWhileMeshcaIsBusy: meshca refuses every CSR for
// 300 ms as beyond its signing queue (ResourceExhausted). The agent, which
// has 30 identities to sign, stops sending CSRs at the first refusal
// instead of trying its other identities one after the other: meshca sees
// only the CSRs that were already on their way (at most MaxSigning), and
// once the hold is over (at least half of the 1 s Backoff.Min, longer than
// the busy spell) every identity is signed.
func TestAgentHoldsCSRsWhileMeshcaIsBusy(t *testing.T) {
	const (
		identities = 30
		busyFor    = 300 * time.Millisecond
	)
	m := newSigningMeshca(t, identities)
	var (
		mu        sync.Mutex
		firstCSR  time.Time
		refused   int
		busyLasts time.Duration
	)
	m.refuse = func() error {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if firstCSR.IsZero() {
			firstCSR = now
		}
		if now.Sub(firstCSR) < busyFor {
			refused++
			busyLasts = now.Sub(firstCSR)
			return status.Error(codes.ResourceExhausted, "meshca is busy signing: retry later")
		}
		return nil
	}
	conn := m.start(t)
	start := time.Now()
	a := startAgent(t, agent.Config{Conn: conn, Node: "bench-node", TrustDomain: td, Logger: testkit.Logger(t)})
	first, _ := m.answer()
	waitRenewed(t, a, identities, first.IssuerSerial, agent.State{})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d identities: %d CSRs refused while meshca was busy (%s), all signed %s after the start",
		identities, refused, busyLasts.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if refused == 0 {
		t.Fatal("no CSR was refused: the test did not make meshca busy")
	}
	if refused > agent.DefaultMaxSigning {
		t.Fatalf("%d CSRs refused in the %s meshca was busy: the agent went on sending after the first refusal (at most %d were on their way)",
			refused, busyFor, agent.DefaultMaxSigning)
	}
}
