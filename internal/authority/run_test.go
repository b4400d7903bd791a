package authority_test

import (
	"context"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
)

// TestRunFollowsACASetChangedElsewhere: a second authority on the same
// store (as a replica would be) learns of a rotation another one started
// only from the change feed, and issues from the new intermediate.
func TestRunFollowsACASetChangedElsewhere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	td, _ := identity.TrustDomain("mesh.local")
	other, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if !other.CA().Issuer().Equal(r.CA().Issuer()) {
		t.Fatal("two authorities on one store load different CAs")
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- other.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	next := serialHex(r.CA().Issuer())
	start := time.Now()
	for serialHex(other.CA().Issuer()) != next {
		select {
		case <-ctx.Done():
			t.Fatalf("the other authority still issues from %s, not %s", serialHex(other.CA().Issuer()), next)
		case <-time.After(time.Millisecond): // a bounded poll: Run signals nothing
		}
	}
	took := time.Since(start)
	if rot := other.RotationStatus(); rot == nil || rot.Phase == "" {
		t.Fatalf("the other authority does not see the rotation: %+v", rot)
	}
	// Its issuance goes through the new intermediate.
	reg, err := registry.New(ctx, registry.Config{Store: st, TrustDomain: td, Issuer: other, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	got, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: "echo"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if got.Cert.IssuerSerial != next {
		t.Fatalf("issued by %s, want the new intermediate %s", got.Cert.IssuerSerial, next)
	}
	t.Logf("a rotation started by another authority became the CA in use %s after it returned", took.Round(time.Microsecond))
}
