package authority_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

func rotationEvents(t *testing.T, r *rig) int {
	n := 0
	for _, e := range events(t, r) {
		if e.Action == authority.ActionCARotate && e.Outcome == store.OutcomeOK {
			n++
		}
	}
	return n
}

// acks answers AdvanceRotation with fixed counts.
func acks(pending, connected int) authority.Acks {
	return func(context.Context) (int, int) { return pending, connected }
}

// joinNode registers a node holding ids and joins it: it then has a node
// certificate from the current issuer.
func joinNode(t *testing.T, r *rig, name string, ids ...string) {
	t.Helper()
	ctx := context.Background()
	_, tok, err := r.AddNode(ctx, registry.AddNode{Name: name, Identities: ids}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, name, tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
}

func TestIntermediateRotationPhases(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo", TTL: 720 * time.Hour}, "test"); err != nil {
		t.Fatal(err)
	}
	oldIssuer, oldBundle := r.CA().Issuer(), string(r.CA().BundlePEM())

	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	if err := r.StartRotation(ctx, true, "test"); !errors.Is(err, authority.ErrRotating) {
		t.Fatalf("second rotation: %v", err)
	}
	rot := r.RotationStatus()
	if rot == nil || rot.Kind != store.RotationIntermediate || rot.Phase != store.PhaseReissuing {
		t.Fatalf("status = %+v", rot)
	}
	newIssuer := r.CA().Issuer()
	if newIssuer.Equal(oldIssuer) || newIssuer.CheckSignatureFrom(r.CA().Roots()[0]) != nil || string(r.CA().BundlePEM()) != oldBundle {
		t.Fatal("an intermediate rotation must switch to a new intermediate under the same root, bundle unchanged")
	}
	// Until the registry re-keys echo the rotation waits for it, and says
	// so.
	if phase, err := r.AdvanceRotation(ctx, acks(0, 1)); err != nil || phase != store.PhaseReissuing {
		t.Fatalf("advanced before the leaf was re-keyed: %q %v", phase, err)
	}
	if rot := r.RotationStatus(); rot.Leaves != 1 || rot.Reissued != 0 || !strings.Contains(rot.WaitingFor, "1 leaf certificate(s) to re-issue under the new CA") {
		t.Fatalf("progress before the re-key = %+v", rot)
	}
	// The registry re-keys echo; one connected node has not acknowledged
	// it yet.
	if res := r.rekey(t); !res.Rotating || res.Total != 1 || res.Reissued != 1 {
		t.Fatalf("re-key pass = %+v", res)
	}
	if phase, err := r.AdvanceRotation(ctx, acks(1, 1)); err != nil || phase != store.PhaseReissuing {
		t.Fatalf("advanced past a pending node: %q %v", phase, err)
	}
	st1, _ := r.Identity(ctx, "echo")
	if st1.Cert.IssuerSerial != serialHex(newIssuer) {
		t.Fatal("echo was not re-issued under the new intermediate")
	}
	if rot := r.RotationStatus(); rot.Leaves != 1 || rot.Reissued != 1 || rot.NodesConnected != 1 || rot.NodesAcked != 0 ||
		!strings.Contains(rot.WaitingFor, "acknowledge") || rot.RetireAfter.IsZero() {
		t.Fatalf("progress = %+v", rot)
	}
	if phase, err := r.AdvanceRotation(ctx, acks(0, 1)); err != nil || phase != "" || r.RotationStatus() != nil {
		t.Fatalf("not done once every leaf was re-issued and acknowledged: %q %v %+v", phase, err, r.RotationStatus())
	}
	if !clk.Now().Equal(t0) {
		t.Fatal("the fake clock moved")
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
	r := newRig(t, st, clk)
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo"}, "test"); err != nil {
		t.Fatal(err)
	}
	joinNode(t, r, "n1", "echo")
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
	if phase, _ := r.AdvanceRotation(ctx, acks(0, 0)); phase != store.PhasePublishing || r.RotationStatus().WaitingFor == "" {
		t.Fatal("switched before the publish grace, when a node that holds a certificate may not have reconnected")
	}
	clk.Add(authority.PublishGrace)
	if phase, _ := r.AdvanceRotation(ctx, acks(1, 1)); phase != store.PhasePublishing || r.RotationStatus().WaitingFor == "" {
		t.Fatal("switched while a node had not acknowledged the bundle")
	}
	// Acknowledged: the switch; the registry re-keys the leaf, then the
	// rotation waits for n1 to renew its node certificate.
	if phase, err := r.AdvanceRotation(ctx, acks(0, 1)); err != nil || phase != store.PhaseReissuing {
		t.Fatalf("phase %q, %v", phase, err)
	}
	r.rekey(t)
	if phase, err := r.AdvanceRotation(ctx, acks(0, 1)); err != nil || phase != store.PhaseReissuing {
		t.Fatalf("phase %q, %v", phase, err)
	}
	if r.CA().Issuer().CheckSignatureFrom(newRoot) != nil || !r.CA().Roots()[0].Equal(newRoot) || len(r.CA().Roots()) != 2 {
		t.Fatal("after the switch the issuer must chain to the new root, with both roots trusted")
	}
	if rot := r.RotationStatus(); rot.Reissued != 1 || rot.OldNodeCerts != 1 || !rot.OwnWorkDone || !strings.Contains(rot.WaitingFor, "node certificate") {
		t.Fatalf("progress = %+v", rot)
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
	r = newRig(t, st, clk)
	if rot := r.RotationStatus(); rot == nil || rot.Phase != store.PhaseReissuing {
		t.Fatalf("after restart: %+v", rot)
	}
	if _, err := r.RenewNode(ctx, "n1", nodeCertOf(t, r, "n1"), csr(t)); err != nil {
		t.Fatal(err)
	}
	if phase, err := r.AdvanceRotation(ctx, acks(0, 0)); err != nil || phase != "" {
		t.Fatalf("not done once the node renewed: %q %v", phase, err)
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
	r := newRig(t, st, clk)
	issuer := r.CA().Issuer()
	at := authority.Default().AutoRotateAt(issuer.NotBefore, issuer.NotAfter)
	clk.Set(at.Add(-time.Minute))
	if phase, _ := r.AdvanceRotation(ctx, acks(0, 0)); phase != "" {
		t.Fatal("rotated before 80% of the intermediate's lifetime")
	}
	clk.Set(at)
	if phase, err := r.AdvanceRotation(ctx, acks(0, 0)); err != nil || phase != store.PhaseReissuing {
		t.Fatalf("no automatic rotation at 80%%: %q %v", phase, err)
	}
	if r.CA().Issuer().Equal(issuer) {
		t.Fatal("issuer unchanged")
	}
}

func TestImportedCACannotRotateIntermediate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRig(t, st, clock.NewFake(t0))
	chain, key := orgCA(t, t0)
	if err := r.ImportCA(ctx, chain, key, "test"); err != nil {
		t.Fatal(err)
	}
	if err := r.StartRotation(ctx, false, "test"); !errors.Is(err, ca.ErrConfig) {
		t.Fatalf("err = %v, want ca.ErrConfig (no root key)", err)
	}
}
