package authority_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

// TestRotationRekeyedFromTheFeedByAnotherRegistry: the leaves of a
// rotation driven by one authority are re-keyed by a registry that learns
// of it only from the store's change feed, with its own authority (as on
// another replica) that never ran its feed loop: it signs under the new
// intermediate all the same, and the rotation finishes with every leaf on
// the new issuer.
func TestRotationRekeyedFromTheFeedByAnotherRegistry(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	driver := newRig(t, st, clk)
	const n = 100
	names := addIdentities(t, driver, n, time.Hour)

	td, _ := identity.TrustDomain("mesh.local")
	otherAuth, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	other, err := registry.New(ctx, registry.Config{Store: st, TrustDomain: td, Issuer: otherAuth, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopRekey := context.WithCancel(ctx)
	rekeyDone := make(chan error, 1)
	go func() { rekeyDone <- other.RunRekey(rctx) }()
	defer func() {
		stopRekey()
		if err := <-rekeyDone; err != nil {
			t.Error(err)
		}
	}()

	if err := driver.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	issuer := serialHex(driver.CA().Issuer())
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	caDone := make(chan error, 1)
	go func() { caDone <- driver.RunCA(cctx, acks(0, 0)) }()
	start, realStart := clk.Now(), time.Now()
	ticks := 0
	for driver.RotationStatus() != nil || ticks == 0 {
		// RunCA is the only user of the clock while no re-key fails.
		if err := clk.WaitForWaiters(cctx, 1); err != nil {
			t.Fatal(err)
		}
		if driver.RotationStatus() == nil {
			break
		}
		if ticks == 10 {
			t.Fatalf("rotation not done after %d ticks: %+v", ticks, driver.RotationStatus())
		}
		settle(t, st)
		clk.Add(authority.RotationTick)
		ticks++
	}
	fake, real := clk.Now().Sub(start), time.Since(realStart)
	cancel()
	if err := <-caDone; err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		s, _ := driver.Identity(ctx, name)
		if s.Cert.IssuerSerial != issuer {
			t.Fatalf("%s is on issuer %s, not the new %s", name, s.Cert.IssuerSerial, issuer)
		}
	}
	if got := serialHex(otherAuth.CA().Issuer()); got != issuer {
		t.Fatalf("the re-keying registry's authority signs with %s, want the new %s", got, issuer)
	}
	reissues := 0
	for _, e := range events(t, driver) {
		if e.Action == authority.ActionCARotateReissue {
			if e.Outcome != store.OutcomeOK || e.Actor != "meshca" || !strings.Contains(e.Detail, "ca_rotation=intermediate") {
				t.Fatalf("re-key audit record %+v", e)
			}
			reissues++
		}
	}
	if d := driver.LastRotation(); d == nil || d.Reissued != n || reissues != n {
		t.Fatalf("last rotation %+v, %d re-key records; want %d", d, reissues, n)
	}
	t.Logf("intermediate rotation of %d identities re-keyed by another registry from the feed: done after %s of fake time (%d ticks), %s real",
		n, fake, ticks, real.Round(time.Millisecond))
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRekeyFailureRetriedOnTheTimerAuditedOnce: a re-key that fails is
// audited once, tried again when the retry timer fires (fake clock), not
// audited again when it fails again, and the leaf moves to the new issuer
// on the first retry after the signer is back.
func TestRekeyFailureRetriedOnTheTimerAuditedOnce(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	const n = 20
	addIdentities(t, r, n, time.Hour)
	failing := "svc-007"
	r.issuer.failing.Store(&failing)
	r.runRekey(t)
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	issuer := serialHex(r.CA().Issuer())
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	audited := func() (failed, ok int) {
		for _, e := range events(t, r) {
			if e.Action != authority.ActionCARotateReissue || e.Identity != failing {
				continue
			}
			switch e.Outcome {
			case store.OutcomeFailed:
				failed++
			case store.OutcomeOK:
				ok++
			}
		}
		return failed, ok
	}
	onNew := func(name string) bool {
		s, _ := r.Identity(ctx, name)
		return s.Cert.IssuerSerial == issuer
	}
	// The first pass: every leaf but one re-keyed, the failure audited, the
	// re-keying parked on its retry timer (the only user of the clock).
	if err := clk.WaitForWaiters(wctx, 1); err != nil {
		t.Fatal(err)
	}
	if n, _ := staleCount(ctx, st); n != 1 || onNew(failing) {
		t.Fatalf("%d leaves left after the first pass, want 1 (%s)", n, failing)
	}
	if f, _ := audited(); f != 1 {
		t.Fatalf("%d failures audited after the first pass, want 1", f)
	}
	calls := clk.AfterCalls()
	// The timer fires: a retry, which fails again and is not audited again.
	clk.Add(registry.RekeyRetry - time.Millisecond)
	if clk.Waiters() != 1 || clk.AfterCalls() != calls {
		t.Fatal("retried before the timer fired")
	}
	clk.Add(time.Millisecond)
	if err := clk.WaitForAfterCalls(wctx, calls+1); err != nil {
		t.Fatal(err)
	}
	if f, ok := audited(); f != 1 || ok != 0 || onNew(failing) {
		t.Fatalf("after a failed retry: %d failures and %d re-keys audited, want 1 and 0", f, ok)
	}
	// The signer is back: the next tick re-keys it, audited once.
	r.issuer.failing.Store(nil)
	clk.Add(registry.RekeyRetry)
	settle(t, st)
	if f, ok := audited(); f != 1 || ok != 1 || !onNew(failing) {
		t.Fatalf("after the signer is back: %d failures and %d re-keys audited, want 1 and 1", f, ok)
	}
	if phase, err := r.AdvanceRotation(ctx, acks(0, 0)); err != nil || phase != "" {
		t.Fatalf("rotation not done: %q %v %+v", phase, err, r.RotationStatus())
	}
	if d := r.LastRotation(); d == nil || d.Reissued != n {
		t.Fatalf("last rotation = %+v", d)
	}
	t.Logf("%d leaves, one failing twice: re-keyed on the retry timer (%s), its failure audited once", n, registry.RekeyRetry)
}

// TestLeafIssuedUnderThePreviousCAIsRekeyed: a replica that has not seen
// the switch yet issues a leaf under the previous issuer; the re-keying
// learns of the new identity from the feed and moves it too.
func TestLeafIssuedUnderThePreviousCAIsRekeyed(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	addIdentities(t, r, 3, time.Hour)
	// The lagging replica loads the CA before the rotation and never
	// follows the feed.
	td, _ := identity.TrustDomain("mesh.local")
	laggingAuth, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	lagging, err := registry.New(ctx, registry.Config{Store: st, TrustDomain: td, Issuer: laggingAuth, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	previous := serialHex(r.CA().Issuer())
	r.runRekey(t)
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	settle(t, st)
	late, err := lagging.AddIdentity(ctx, registry.AddIdentity{Name: "late", TTL: time.Hour}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if late.Cert.IssuerSerial != previous {
		t.Fatalf("the lagging replica issued under %s, not the previous %s: the test shows nothing", late.Cert.IssuerSerial, previous)
	}
	settle(t, st)
	s, _ := r.Identity(ctx, "late")
	if issuer := serialHex(r.CA().Issuer()); s.Cert.IssuerSerial != issuer {
		t.Fatalf("late is on %s, want the new %s", s.Cert.IssuerSerial, issuer)
	}
	if phase, err := r.AdvanceRotation(ctx, acks(0, 0)); err != nil || phase != "" {
		t.Fatalf("rotation not done: %q %v %+v", phase, err, r.RotationStatus())
	}
}
