package agent_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
)

// TestAgentWorkloadAPIGetsRenewalBurstTogether: a CA switch re-keys 40
// identities at once; a Workload API client watching its X.509 SVIDs
// (go-spiffe's) is sent that burst as a few updates, not one per
// certificate (each carries every SVID with its key), and the last one
// holds every new certificate. The agent's clock never moves, so the bound
// on the wait never fires: the burst is sent once no renewal is pending.
func TestAgentWorkloadAPIGetsRenewalBurstTogether(t *testing.T) {
	const identities = 40
	m := newSigningMeshca(t, identities)
	conn := m.start(t)
	socket := filepath.Join(t.TempDir(), "run", "workload.sock")
	a := startAgent(t, agent.Config{Conn: conn, Node: "bench-node", TrustDomain: td, WorkloadSocket: socket, Clock: clock.NewFake(time.Now()), Logger: testkit.Logger(t)})
	first, _ := m.answer()
	st := waitRenewed(t, a, identities, first.IssuerSerial, agent.State{})

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	updates := make(x509Updates, 1024)
	go func() { _ = client.WatchX509Context(ctx, updates) }()
	// holds reports whether an update serves exactly the certificates of st.
	holds := func(c *workloadapi.X509Context, st agent.State) bool {
		if len(c.SVIDs) != len(st.SVIDs) {
			return false
		}
		for _, s := range c.SVIDs {
			v, ok := st.SVID(s.ID.Path()[1:])
			if !ok || serial(s.Certificates[0]) != v.Serial {
				return false
			}
		}
		return true
	}
	until := func(st agent.State) int {
		t.Helper()
		n := 0
		for {
			select {
			case c := <-updates:
				n++
				if holds(c, st) {
					return n
				}
			case <-ctx.Done():
				t.Fatalf("the Workload API never sent the agent's %d certificates (%d updates)", len(st.SVIDs), n)
			}
		}
	}
	until(st)

	serialNow := m.switchIssuer()
	st = waitRenewed(t, a, identities, serialNow, st)
	n := until(st)
	t.Logf("%d identities re-keyed at once: %d Workload API updates", identities, n)
	if n > identities/4 {
		t.Fatalf("%d Workload API updates for a burst of %d renewals: the burst is sent per certificate", n, identities)
	}
}
