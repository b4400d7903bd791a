package agent_test

import (
	"crypto/x509/pkix"
	"log/slog"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// TestAgentPollsMeshcaWithoutWatch: against a meshca that does not serve
// the identity watch (Unimplemented), the agent says so and learns a new
// assignment at its identity poll (1 min here), not at the watched
// fallback (1 h).
func TestAgentPollsMeshcaWithoutWatch(t *testing.T) {
	l := &lyingMeshca{identities: []nodeapi.AssignedIdentity{{Name: "web", SPIFFEID: idName("web")}},
		ca: testkit.NewCA(t, pkix.Name{CommonName: "older meshca"}, time.Now().Add(24*time.Hour), nil)}
	conn := l.start(t)
	logs := newLogRecorder(t)
	clk := clock.NewFake(time.Now())
	a := startAgent(t, agent.Config{Conn: conn, Node: "n", TrustDomain: td, IdentityPoll: time.Minute, WatchedPoll: time.Hour,
		Clock: clk, Logger: slog.New(logs)})
	waitState(t, a, "web", func(s agent.State) bool { _, ok := s.SVID("web"); return ok })
	logs.waitFor(t, 0, slog.LevelInfo, "does not push identity changes")

	l.mu.Lock()
	l.identities = append(l.identities, nodeapi.AssignedIdentity{Name: "api", SPIFFEID: idName("api")})
	l.mu.Unlock()
	start := clk.Now()
	deadline := time.Now().Add(waitLimit)
	for {
		st, changed := a.State()
		if _, ok := st.SVID("api"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("api never served; %s of fake time passed", clk.Now().Sub(start))
		}
		clk.Add(10 * time.Second)
		select { // the poll may not be parked yet: any change ends the wait
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
	took := clk.Now().Sub(start)
	t.Logf("meshca without the identity watch: new assignment served after %s of fake time (identity poll 1m)", took)
	// The clock goes on while the poll and the CSR cross the loaded
	// machine: a wide margin, still far from the 1 h watched fallback.
	if took > 15*time.Minute {
		t.Fatalf("learnt the assignment after %s of fake time; want the 1 min poll, not the 1 h fallback", took)
	}
}
