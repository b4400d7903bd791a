package authority_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

// readLog records which records a rotation's count read.
type readLog map[string]int

func (l readLog) take() []string {
	out := slices.Sorted(maps.Keys(l))
	clear(l)
	return out
}

// TestRotationCountsFollowTheFeed: while a rotation waits, its counts of
// the leaves left to re-key and of the agent certificates from the
// leaving CA read every record once, then only the records the feed names
// as changed: a leaf re-keyed since is read and counted, the others are
// not read again, and a tick with nothing committed reads nothing.
func TestRotationCountsFollowTheFeed(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	names := addIdentities(t, r, 4, 720*time.Hour)
	agents := []string{"a1", "a2", "a3"}
	for _, node := range agents {
		_, tok, err := r.AddNode(ctx, registry.AddNode{Name: node, Identities: []string{"svc-000"}, Agent: true}, "test")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Join(ctx, node, tok.Token, csr(t), "test"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.SignCSR(ctx, node, nodeCertOf(t, r, node), "svc-000", csr(t)); err != nil {
			t.Fatal(err)
		}
	}
	leaves, agentNodes := readLog{}, readLog{}
	authority.CountLeafReads(r.Authority, func(id string) { leaves[id]++ })
	authority.CountAgentCertReads(r.Authority, func(node, _ string) { agentNodes[node]++ })

	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 0)) // switch, then count the leaves
	if got := leaves.take(); !slices.Equal(got, names) {
		t.Fatalf("first count read leaves %v, want every identity's %v", got, names)
	}
	if rot := r.RotationStatus(); rot == nil || rot.Leaves != 4 || rot.Reissued != 0 {
		t.Fatalf("status %+v, want 4 leaves, none re-issued", rot)
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if got := leaves.take(); len(got) != 0 {
		t.Fatalf("a tick with nothing committed read leaves %v", got)
	}
	if _, err := r.ReissueIdentity(ctx, "svc-002", "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if got := leaves.take(); !slices.Equal(got, []string{"svc-002"}) {
		t.Fatalf("after one re-issue the count read leaves %v, want only [svc-002]", got)
	}
	if rot := r.RotationStatus(); rot == nil || rot.Leaves != 4 || rot.Reissued != 1 {
		t.Fatalf("status %+v, want 4 leaves, 1 re-issued", rot)
	}
	t.Logf("leaf count: %d identities read once, then 1 read for 1 re-issue, 0 for a tick without commits", len(names))

	// The other leaves are re-keyed, the node certificates renewed: the
	// rotation now waits for the agents' certificates.
	r.rekey(t)
	for _, node := range agents {
		if _, err := r.RenewNode(ctx, node, nodeCertOf(t, r, node), csr(t)); err != nil {
			t.Fatal(err)
		}
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if got := agentNodes.take(); !slices.Equal(got, agents) {
		t.Fatalf("first agent count read nodes %v, want %v", got, agents)
	}
	if rot := r.RotationStatus(); rot == nil || rot.Phase != store.PhaseReissuing || rot.OldAgentCerts != 3 {
		t.Fatalf("status %+v, want 3 agent certificates awaited", rot)
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if got := agentNodes.take(); len(got) != 0 {
		t.Fatalf("a tick with nothing committed read agent nodes %v", got)
	}
	// a2 re-keys under the new CA: only a2 is read, and counted.
	if _, err := r.SignCSR(ctx, "a2", nodeCertOf(t, r, "a2"), "svc-000", csr(t)); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if got := agentNodes.take(); !slices.Equal(got, []string{"a2"}) {
		t.Fatalf("after a2 re-keyed the count read agent nodes %v, want only [a2]", got)
	}
	if rot := r.RotationStatus(); rot == nil || rot.OldAgentCerts != 2 {
		t.Fatalf("status %+v, want 2 agent certificates awaited", rot)
	}
	// Revoking a3's certificate reads a3 alone, and a3 stops counting.
	if _, err := r.RevokeNode(ctx, "a3", "key-compromise", "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if got := agentNodes.take(); slices.Contains(got, "a1") || slices.Contains(got, "a2") {
		t.Fatalf("after a3 was revoked the count read agent nodes %v, want a3 alone", got)
	}
	if rot := r.RotationStatus(); rot == nil || rot.OldAgentCerts != 1 {
		t.Fatalf("status %+v, want 1 agent certificate awaited", rot)
	}
	t.Logf("agent count: %d agent nodes read once, then 1 node read per node changed, 0 for a tick without commits", len(agents))
}
