package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

func rotationEvents(t *testing.T, r *Registry) int {
	n := 0
	for _, e := range events(t, r) {
		if e.Action == ActionCARotate && e.Outcome == store.OutcomeOK {
			n++
		}
	}
	return n
}

func reissueAll(t *testing.T, r *Registry, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := r.ReissueIdentity(context.Background(), n, "test"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestIntermediateRotationPhases(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "echo", TTL: 2 * time.Hour}, "test"); err != nil {
		t.Fatal(err)
	}
	oldIssuer, oldBundle := r.CA().Issuer(), string(r.CA().BundlePEM())
	none := func() int { return 0 }

	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	if err := r.StartRotation(ctx, true, "test"); !errors.Is(err, ErrRotating) {
		t.Fatalf("second rotation: %v", err)
	}
	rot := r.RotationStatus()
	if rot == nil || rot.Kind != store.RotationIntermediate || rot.Phase != store.PhaseReissuing {
		t.Fatalf("status = %+v", rot)
	}
	// Longest leaf lifetime: node certificates (24h) beat echo's 2h.
	if want := clk.Now().Add(DefaultNodeCertTTL + ca.DefaultBackdate); !rot.RetireAfter.Equal(want) {
		t.Fatalf("retire after %s, want %s", rot.RetireAfter, want)
	}
	newIssuer := r.CA().Issuer()
	if newIssuer.Equal(oldIssuer) || newIssuer.CheckSignatureFrom(r.CA().Roots()[0]) != nil || string(r.CA().BundlePEM()) != oldBundle {
		t.Fatal("an intermediate rotation must switch to a new intermediate under the same root, bundle unchanged")
	}
	st0, _ := r.Identity(ctx, "echo")
	if !r.Stale(st0.Cert.IssuerSerial) {
		t.Fatal("echo's certificate is not reported stale")
	}
	if phase, _ := r.AdvanceRotation(ctx, none); phase != store.PhaseReissuing || r.RotationStatus().WaitingFor == "" {
		t.Fatalf("advanced with a stale leaf: %q %+v", phase, r.RotationStatus())
	}
	reissueAll(t, r, "echo")
	if phase, _ := r.AdvanceRotation(ctx, none); phase != store.PhaseReissuing {
		t.Fatal("retired the previous CA before the longest leaf lifetime")
	}
	clk.Set(rot.RetireAfter)
	if phase, err := r.AdvanceRotation(ctx, none); err != nil || phase != "" || r.RotationStatus() != nil {
		t.Fatalf("not done after retire time: %q %v %+v", phase, err, r.RotationStatus())
	}
	if n := rotationEvents(t, r); n != 2 {
		t.Fatalf("%d rotation audit records, want 2 (start, done)", n)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRootRotationPhases(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "echo"}, "test"); err != nil {
		t.Fatal(err)
	}
	oldRoot, oldIssuer := r.CA().Roots()[0], r.CA().Issuer()
	sc, err := r.ServerCert(nil, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	if err := r.StartRotation(ctx, true, "test"); err != nil {
		t.Fatal(err)
	}
	if rot := r.RotationStatus(); rot.Phase != store.PhasePublishing {
		t.Fatalf("phase %q", rot.Phase)
	}
	roots := r.CA().Roots()
	if len(roots) != 2 || !roots[0].Equal(oldRoot) || !r.CA().Issuer().Equal(oldIssuer) {
		t.Fatal("publishing must add the new root and keep issuing from the old CA")
	}
	newRoot := roots[1]
	pending := 0
	if phase, _ := r.AdvanceRotation(ctx, func() int { return pending }); phase != store.PhasePublishing || r.RotationStatus().WaitingFor == "" {
		t.Fatal("switched before the publish grace, when nodes may not have reconnected")
	}
	clk.Add(publishGrace)
	pending = 2
	if phase, _ := r.AdvanceRotation(ctx, func() int { return pending }); phase != store.PhasePublishing || r.RotationStatus().WaitingFor == "" {
		t.Fatal("switched while nodes had not acknowledged the bundle")
	}
	pending = 0
	if phase, err := r.AdvanceRotation(ctx, func() int { return pending }); err != nil || phase != store.PhaseReissuing {
		t.Fatalf("phase %q, %v", phase, err)
	}
	if r.CA().Issuer().CheckSignatureFrom(newRoot) != nil || !r.CA().Roots()[0].Equal(newRoot) || len(r.CA().Roots()) != 2 {
		t.Fatal("after the switch the issuer must chain to the new root, with both roots trusted")
	}
	// meshca's own certificate stays under the old root until it retires.
	cert, err := sc.Get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.CheckSignatureFrom(oldIssuer) != nil {
		t.Fatal("server certificate moved to the new root before nodes' bundle files know it")
	}
	// A restart in the middle keeps the phase.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRegistry(t, st, clk)
	if rot := r.RotationStatus(); rot == nil || rot.Phase != store.PhaseReissuing {
		t.Fatalf("after restart: %+v", rot)
	}
	reissueAll(t, r, "echo")
	clk.Set(r.RotationStatus().RetireAfter)
	if phase, err := r.AdvanceRotation(ctx, func() int { return 0 }); err != nil || phase != "" {
		t.Fatalf("not done: %q %v", phase, err)
	}
	if roots := r.CA().Roots(); len(roots) != 1 || !roots[0].Equal(newRoot) {
		t.Fatal("the old root was not retired")
	}
	sc, _ = r.ServerCert(nil, 2*time.Hour)
	cert, _ = sc.Get(nil)
	if cert.Leaf.CheckSignatureFrom(r.CA().Issuer()) != nil {
		t.Fatal("server certificate not under the new CA after retirement")
	}
}

func TestAutomaticIntermediateRotation(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	issuer := r.CA().Issuer()
	at := issuer.NotBefore.Add(time.Duration(float64(issuer.NotAfter.Sub(issuer.NotBefore)) * autoRotateAt))
	clk.Set(at.Add(-time.Minute))
	if phase, _ := r.AdvanceRotation(ctx, func() int { return 0 }); phase != "" {
		t.Fatal("rotated before 80% of the intermediate's lifetime")
	}
	clk.Set(at)
	if phase, err := r.AdvanceRotation(ctx, func() int { return 0 }); err != nil || phase != store.PhaseReissuing {
		t.Fatalf("no automatic rotation at 80%%: %q %v", phase, err)
	}
	if r.CA().Issuer().Equal(issuer) {
		t.Fatal("issuer unchanged")
	}
}

func TestImportedCACannotRotateIntermediate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	chain, key := orgCA(t, t0)
	if err := r.ImportCA(ctx, chain, key, "test"); err != nil {
		t.Fatal(err)
	}
	if err := r.StartRotation(ctx, false, "test"); !errors.Is(err, ca.ErrConfig) {
		t.Fatalf("err = %v, want ca.ErrConfig (no root key)", err)
	}
}
