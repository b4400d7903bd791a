package authority_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

// TestRotationWaitsForAgentCerts: with the leaves re-keyed and the node
// certificates renewed, an intermediate rotation still waits for the agent
// nodes' certificates from the previous CA, says how many, and is bounded
// by the last of their expiries; it counts one less when an agent re-keys,
// none for a revoked node's, and then retires the previous CA.
func TestRotationWaitsForAgentCerts(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	addIdentities(t, r, 1, 720*time.Hour)
	var last time.Time
	for _, node := range []string{"a1", "a2"} {
		_, tok, err := r.AddNode(ctx, registry.AddNode{Name: node, Identities: []string{"svc-000"}, Agent: true}, "test")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Join(ctx, node, tok.Token, csr(t), "test"); err != nil {
			t.Fatal(err)
		}
		s, err := r.SignCSR(ctx, node, nodeCertOf(t, r, node), "svc-000", csr(t))
		if err != nil {
			t.Fatal(err)
		}
		if s.IssuerSerial != serialHex(r.CA().Issuer()) {
			t.Fatalf("signed certificate names issuer %q, want %q", s.IssuerSerial, serialHex(r.CA().Issuer()))
		}
		last = s.NotAfter
	}
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 0)) // switch
	r.rekey(t)
	if cur, err := r.CurrentIssuer(ctx); err != nil || cur != serialHex(r.CA().Issuer()) {
		t.Fatalf("current issuer %q (%v), want %q", cur, err, serialHex(r.CA().Issuer()))
	}
	for _, node := range []string{"a1", "a2"} {
		if _, err := r.RenewNode(ctx, node, nodeCertOf(t, r, node), csr(t)); err != nil {
			t.Fatal(err)
		}
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	rot := r.RotationStatus()
	if rot == nil || rot.Phase != store.PhaseReissuing || rot.OldAgentCerts != 2 || rot.OldNodeCerts != 0 || !rot.OwnWorkDone ||
		!strings.Contains(rot.WaitingFor, "2 agent certificate(s) to be re-keyed by their agents") || !rot.RetireAfter.Equal(last) {
		t.Fatalf("status %+v, want 2 agent certificates awaited until %s", rot, last)
	}

	// a1's agent re-keys under the new CA.
	s, err := r.SignCSR(ctx, "a1", nodeCertOf(t, r, "a1"), "svc-000", csr(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.IssuerSerial != serialHex(r.CA().Issuer()) {
		t.Fatalf("re-keyed certificate names issuer %q, want the new %q", s.IssuerSerial, serialHex(r.CA().Issuer()))
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if rot = r.RotationStatus(); rot == nil || rot.OldAgentCerts != 1 {
		t.Fatalf("after a1 re-keyed: status %+v, want 1 agent certificate awaited", rot)
	}
	t.Logf("waiting for: %s", rot.WaitingFor)

	// a2 is revoked: its certificates are on the CRL, not awaited.
	if _, err := r.RevokeNode(ctx, "a2", "keyCompromise", "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 0))
	if rot = r.RotationStatus(); rot != nil {
		t.Fatalf("with no agent certificate left on the previous CA the rotation is still on: %+v", rot)
	}
}
