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

// TestRotationAgentCountReadsOnlyTheSignedIdentity: while a rotation
// waits for an agent node holding many identities, each certificate
// signed for one of them reads only that identity's certificate, not the
// node's every one (in a storm of CSRs that re-read cost more than the
// signature); the count still follows every re-key, a re-key of the same
// identity twice between two counts is read once, and a change of the
// node's record reads the node as a whole again.
func TestRotationAgentCountReadsOnlyTheSignedIdentity(t *testing.T) {
	const held = 20
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	names := addIdentities(t, r, held, 720*time.Hour)
	_, tok, err := r.AddNode(ctx, registry.AddNode{Name: "a1", Identities: names, Agent: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "a1", tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	sign := func(ident string) {
		t.Helper()
		if _, err := r.SignCSR(ctx, "a1", nodeCertOf(t, r, "a1"), ident, csr(t)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range names {
		sign(id)
	}
	reads := map[[2]string]int{}
	authority.CountAgentCertReads(r.Authority, func(node, ident string) { reads[[2]string{node, ident}]++ })
	take := func() [][2]string {
		out := slices.SortedFunc(maps.Keys(reads), func(a, b [2]string) int { return slices.Compare(a[:], b[:]) })
		clear(reads)
		return out
	}
	awaited := func(want int) {
		t.Helper()
		r.AdvanceRotation(ctx, acks(0, 0))
		if rot := r.RotationStatus(); rot == nil || rot.Phase != store.PhaseReissuing || rot.OldAgentCerts != want {
			t.Fatalf("status %+v, want %d agent certificates awaited", rot, want)
		}
	}

	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 0)) // switch
	r.rekey(t)
	if _, err := r.RenewNode(ctx, "a1", nodeCertOf(t, r, "a1"), csr(t)); err != nil {
		t.Fatal(err)
	}
	awaited(held)
	if got := take(); !slices.Equal(got, [][2]string{{"a1", ""}}) {
		t.Fatalf("first count read %v, want node a1 as a whole", got)
	}

	sign(names[3])
	sign(names[7])
	sign(names[7])
	awaited(held - 2)
	if got, want := take(), [][2]string{{"a1", names[3]}, {"a1", names[7]}}; !slices.Equal(got, want) {
		t.Fatalf("after 3 CSRs of 2 identities the count read %v, want only %v", got, want)
	}
	for _, id := range names[10:] {
		sign(id)
	}
	awaited(held - 2 - (held - 10))
	got := take()
	if len(got) != held-10 || slices.Contains(got, [2]string{"a1", ""}) {
		t.Fatalf("after %d CSRs the count read %v, want their %d identities alone", held-10, got, held-10)
	}

	// The node's record changes (an identity unassigned): a1 is read as a
	// whole, and the identity it left stops counting.
	if _, err := r.Unassign(ctx, "a1", names[0], "test"); err != nil {
		t.Fatal(err)
	}
	awaited(7)
	if got := take(); !slices.Contains(got, [2]string{"a1", ""}) {
		t.Fatalf("after a1's record changed the count read %v, want a1 as a whole", got)
	}
	t.Logf("agent node holding %d identities: read once as a whole, then 1 identity read per identity re-keyed (2 for 3 CSRs), the whole node again when its record changed", held)
}
