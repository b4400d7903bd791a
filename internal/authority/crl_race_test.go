package authority_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"log/slog"
	"math/big"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
)

// TestCRLRaceLostQuietly: two authorities on one store sign the CRL for
// the same revocation, as two replicas do when the feed reports it to
// both; the second stores its CRL while the first is signing. The first
// then finds a newer CRL that lists the same revocation: it stores
// nothing, returns no error, is not left stale, and logs nothing at
// warning or above.
func TestCRLRaceLostQuietly(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	var logs bytes.Buffer
	r := newRigWith(t, st, clk, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	td, _ := identity.TrustDomain("mesh.local")
	other, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo", TTL: 24 * time.Hour}, "test"); err != nil {
		t.Fatal(err)
	}
	res, err := r.RevokeIdentity(ctx, "echo", "key-compromise", "test")
	if err != nil {
		t.Fatal(err)
	}
	var raced atomic.Bool
	authority.SetSignCRL(r.Authority, func(c *x509.Certificate, k crypto.Signer, revoked []ca.Revoked, num *big.Int, this, next time.Time) ([]byte, error) {
		if raced.CompareAndSwap(false, true) {
			// The other replica wins: it stores its CRL first.
			if err := other.PublishCRL(ctx); err != nil {
				t.Errorf("the other signer: %v", err)
			}
		}
		return ca.SignCRL(c, k, revoked, num, this, next)
	})
	before := len(crlIssues(t, r))
	if err := r.PublishCRL(ctx); err != nil {
		t.Fatalf("the signer that lost the race: %v", err)
	}
	if !raced.Load() {
		t.Fatal("no race happened: the CRL was not signed")
	}
	if authority.CRLStale(r.Authority) {
		t.Fatal("the signer that lost the race is marked stale")
	}
	if issued := crlIssues(t, r)[before:]; len(issued) != 1 {
		t.Fatalf("%d CRLs stored by the race, want the winner's alone: %v", len(issued), issued)
	}
	want := slices.Sorted(slices.Values(res.Serials))
	if got := crlSerials(parseCRL(t, r.CRL())); !slices.Equal(got, want) {
		t.Fatalf("CRL lists %v, want %v", got, want)
	}
	if strings.TrimSpace(logs.String()) != "" {
		t.Fatalf("the lost race was logged at warning or above:\n%s", logs.String())
	}
	t.Log("CRL race: the loser stored nothing, returned nil, logged nothing at warning or above")
}
