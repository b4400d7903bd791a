package authority_test

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

// runRotation runs RunCA on clk and moves the clock one tick at a time,
// only when RunCA is parked on it, until no rotation is in progress. It
// returns the fake time that took and the real time.
func runRotation(t *testing.T, r *rig, clk *clock.Fake, a authority.Acks, maxTicks int) (fake, real time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	done := make(chan error, 1)
	go func() { done <- r.RunCA(ctx, a) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	r.runRekey(t)
	start, realStart := clk.Now(), time.Now()
	for i := 0; ; i++ {
		// RunCA is the only user of clk's timers here while no re-key
		// fails: one waiter means it finished a step and sleeps.
		if err := clk.WaitForWaiters(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if r.RotationStatus() == nil {
			return clk.Now().Sub(start), time.Since(realStart)
		}
		if i == maxTicks {
			t.Fatalf("rotation not done after %d ticks of %s: %+v", maxTicks, authority.RotationTick, r.RotationStatus())
		}
		// The registry re-keys in real time, from the feed: let it
		// finish before the rotation's next step.
		settle(t, r.st)
		clk.Add(authority.RotationTick)
	}
}

func addIdentities(t *testing.T, r *rig, n int, ttl time.Duration) []string {
	t.Helper()
	var names []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("svc-%03d", i)
		if _, err := r.AddIdentity(context.Background(), registry.AddIdentity{Name: name, TTL: ttl}, "test"); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	return names
}

// TestIntermediateRotationEndsWhenLeavesAreReissued: one identity with a
// 720h TTL used to hold the previous intermediate for 30 days; the
// rotation now ends once every leaf is re-issued and acknowledged.
func TestIntermediateRotationEndsWhenLeavesAreReissued(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	const n = 200
	names := addIdentities(t, r, n-1, time.Hour)
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "long", TTL: 720 * time.Hour}, "test"); err != nil {
		t.Fatal(err)
	}
	names = append(names, "long")
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	issuer := serialHex(r.CA().Issuer())
	// One connected node acknowledges once it was pushed its certificates.
	feed := watchFeed(t, st)
	node := authority.Acks(func(context.Context) (int, int) {
		if _, ids, _ := feed.drain(); len(ids) > 0 {
			return 1, 1
		}
		return 0, 1
	})
	fake, real := runRotation(t, r, clk, node, 10)
	if fake > 2*authority.RotationTick {
		t.Fatalf("rotation took %s of fake time, want at most %s", fake, 2*authority.RotationTick)
	}
	for _, name := range names {
		s, _ := r.Identity(ctx, name)
		if s.Cert.IssuerSerial != issuer {
			t.Fatalf("%s not re-issued under the new intermediate", name)
		}
	}
	d := r.LastRotation()
	if d == nil || d.Reissued != n || d.Kind != store.RotationIntermediate {
		t.Fatalf("last rotation = %+v", d)
	}
	// Rotation re-issues are told apart from routine renewals.
	if _, err := r.ReissueIdentity(ctx, "long", "rotation"); err != nil {
		t.Fatal(err)
	}
	byAction := map[string]int{}
	for _, e := range events(t, r) {
		if e.Action == authority.ActionCARotateReissue && !strings.Contains(e.Detail, "ca_rotation=intermediate") {
			t.Fatalf("rotation re-issue without its rotation: %+v", e)
		}
		byAction[e.Action]++
	}
	if byAction[authority.ActionCARotateReissue] != n || byAction[registry.ActionCertReissue] != 1 {
		t.Fatalf("audit: %d %s, %d %s; want %d and 1", byAction[authority.ActionCARotateReissue], authority.ActionCARotateReissue, byAction[registry.ActionCertReissue], registry.ActionCertReissue, n)
	}
	t.Logf("intermediate rotation of %d identities (one of 720h): done after %s of fake time, %s real", n, fake, real.Round(time.Millisecond))
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRootRotationWithoutNodesEndsPromptly: with no node that could
// connect, nothing waits for the publish grace or for node certificates.
func TestRootRotationWithoutNodesEndsPromptly(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	const n = 100
	names := addIdentities(t, r, n, 5*time.Minute)
	oldRoot := r.CA().Roots()[0]
	if err := r.StartRotation(ctx, true, "test"); err != nil {
		t.Fatal(err)
	}
	fake, real := runRotation(t, r, clk, acks(0, 0), 10)
	if fake > 2*authority.RotationTick {
		t.Fatalf("root rotation took %s of fake time, want at most %s", fake, 2*authority.RotationTick)
	}
	roots := r.CA().Roots()
	if len(roots) != 1 || roots[0].Equal(oldRoot) {
		t.Fatal("the old root is still in the bundle")
	}
	for _, name := range names {
		s, _ := r.Identity(ctx, name)
		if s.Cert.IssuerSerial != serialHex(r.CA().Issuer()) {
			t.Fatalf("%s not under the new CA", name)
		}
	}
	t.Logf("root rotation of %d identities, no node: done after %s of fake time, %s real", n, fake, real.Round(time.Millisecond))
}

// TestAbortRootRotationBeforeSwitch: the new root is withdrawn and the CA
// and bundle are as before.
func TestAbortRootRotationBeforeSwitch(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	addIdentities(t, r, 3, time.Hour)
	joinNode(t, r, "n1", "svc-000")
	bundle, issuer := string(r.CA().BundlePEM()), r.CA().Issuer()
	cur, _ := r.Identity(ctx, "svc-000")
	feed := watchFeed(t, st)

	if err := r.StartRotation(ctx, true, "test"); err != nil {
		t.Fatal(err)
	}
	if phase, _ := r.AdvanceRotation(ctx, acks(1, 1)); phase != store.PhasePublishing {
		t.Fatalf("phase %q", phase)
	}
	if len(r.CA().Roots()) != 2 {
		t.Fatal("new root not published")
	}
	feed.drain()
	if err := r.AbortRotation(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if r.RotationStatus() != nil || string(r.CA().BundlePEM()) != bundle || !r.CA().Issuer().Equal(issuer) {
		t.Fatal("abort did not restore the CA and bundle")
	}
	if _, _, trust := feed.drain(); !trust {
		t.Fatal("the bundle without the new root was not announced")
	}
	if after, _ := r.Identity(ctx, "svc-000"); after.Cert.Serial != cur.Cert.Serial {
		t.Fatal("abort re-issued a leaf")
	}
	if d := r.LastRotation(); d == nil || !d.Aborted {
		t.Fatalf("last rotation = %+v", d)
	}
	if err := r.AbortRotation(ctx, "test"); !errors.Is(err, authority.ErrNoRotation) || !strings.Contains(err.Error(), "no CA rotation is in progress") {
		t.Fatalf("second abort: %v", err)
	}
	// Past the switch there is no going back.
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	err := r.AbortRotation(ctx, "test")
	if !errors.Is(err, authority.ErrRotating) || !strings.Contains(err.Error(), "--emergency") || !strings.Contains(err.Error(), "--wait") {
		t.Fatalf("abort after the switch: %v", err)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRotationRefusalSaysWhatToDo: a second rotation is refused with the
// phase, what it waits for, when it ends and the operator's options.
func TestRotationRefusalSaysWhatToDo(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	addIdentities(t, r, 2, time.Hour)
	joinNode(t, r, "n1", "svc-000")
	if err := r.StartRotation(ctx, true, "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(1, 1))
	publishing := r.StartRotation(ctx, false, "test")
	clk.Add(authority.PublishGrace)
	r.AdvanceRotation(ctx, acks(0, 1)) // switch
	r.rekey(t)
	r.AdvanceRotation(ctx, acks(0, 1)) // re-keyed; then n1's node certificate is waited for
	rot := r.RotationStatus()
	if rot == nil || rot.Phase != store.PhaseReissuing || rot.RetireAfter.IsZero() {
		t.Fatalf("status %+v", rot)
	}
	reissuing := r.StartRotation(ctx, true, "test")
	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{"publishing", publishing, []string{"phase publishing", "1 of 1 connected node(s) to acknowledge the trust bundle", "switches to the new CA by", "--wait", "--abort", "--emergency --root"}},
		{"reissuing", reissuing, []string{"phase reissuing", "renew their node certificate", "ends by " + rot.RetireAfter.Format(time.RFC3339), "--wait", "cannot be aborted", "--emergency"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, authority.ErrRotating) {
				t.Fatalf("err = %v", tc.err)
			}
			t.Logf("refusal: %v", tc.err)
			for _, w := range tc.want {
				if !strings.Contains(tc.err.Error(), w) {
					t.Errorf("refusal %q lacks %q", tc.err, w)
				}
			}
		})
	}
	// Each refusal is audited with the phase that caused it.
	denied := 0
	for _, e := range events(t, r) {
		if e.Action == authority.ActionCARotate && e.Outcome == store.OutcomeDenied && strings.Contains(e.Detail, "in phase ") {
			denied++
		}
	}
	if denied != 2 {
		t.Fatalf("%d audited refusals, want 2", denied)
	}
}

// TestEmergencyRotationSupersedes: an emergency root rotation during a
// root rotation in progress replaces every CA key, re-keys every identity
// and revokes the replaced CA's leaves, which appear in the CRL.
func TestEmergencyRotationSupersedes(t *testing.T) {
	for _, tc := range []struct {
		name string
		root bool
		// start puts a rotation in progress.
		start func(t *testing.T, r *rig, clk *clock.Fake)
	}{
		{"root during root publishing", true, func(t *testing.T, r *rig, clk *clock.Fake) {
			if err := r.StartRotation(context.Background(), true, "test"); err != nil {
				t.Fatal(err)
			}
			r.AdvanceRotation(context.Background(), acks(1, 1))
		}},
		{"intermediate during intermediate reissuing", false, func(t *testing.T, r *rig, clk *clock.Fake) {
			if err := r.StartRotation(context.Background(), false, "test"); err != nil {
				t.Fatal(err)
			}
			// Re-issued, but a node has not acknowledged: still in progress.
			r.rekey(t)
			if phase, _ := r.AdvanceRotation(context.Background(), acks(1, 1)); phase != store.PhaseReissuing {
				t.Fatalf("phase %q", phase)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t, dataDir(t))
			clk := clock.NewFake(t0)
			r := newRig(t, st, clk)
			const n = 50
			names := addIdentities(t, r, n, 24*time.Hour)
			joinNode(t, r, "n1", names[:2]...)
			oldRoots := r.CA().Roots()
			// Every unexpired identity certificate so far.
			old := map[string]bool{}
			for _, name := range names {
				s, _ := r.Identity(ctx, name)
				old[s.Cert.Serial] = true
			}
			tc.start(t, r, clk)
			for _, name := range names {
				s, _ := r.Identity(ctx, name)
				old[s.Cert.Serial] = true
			}
			// The registry re-keys as the feed reports the switch.
			r.runRekey(t)
			realStart := time.Now()
			done, err := r.EmergencyRotation(ctx, tc.root, "test")
			took := time.Since(realStart)
			if err != nil {
				t.Fatal(err)
			}
			if r.RotationStatus() != nil || !done.Emergency || done.Reissued != n || done.Revoked != len(old) {
				t.Fatalf("done = %+v (%d old certificates), status %+v", done, len(old), r.RotationStatus())
			}
			roots := r.CA().Roots()
			if len(roots) != 1 || r.CA().Issuer().CheckSignatureFrom(roots[0]) != nil {
				t.Fatalf("bundle holds %d roots, want the new issuer's only", len(roots))
			}
			if tc.root {
				for _, o := range oldRoots {
					if roots[0].Equal(o) {
						t.Fatal("emergency root rotation kept an old root")
					}
				}
			}
			issuer := serialHex(r.CA().Issuer())
			for _, name := range names {
				s, _ := r.Identity(ctx, name)
				if s.Cert.IssuerSerial != issuer || old[s.Cert.Serial] {
					t.Fatalf("%s not re-keyed under the new CA", name)
				}
			}
			inCRL := map[string]bool{}
			rest := r.CRL()
			for b, more := pem.Decode(rest); b != nil; b, more = pem.Decode(more) {
				crl := parseCRL(t, pem.EncodeToMemory(b))
				for _, s := range crlSerials(crl) {
					inCRL[s] = true
				}
			}
			for s := range old {
				if !inCRL[s] {
					t.Fatalf("certificate %s of the replaced CA is not in the CRL", s)
				}
			}
			var revocations []store.Revocation
			st.View(ctx, func(tx *store.Tx) (err error) { revocations, err = tx.Revocations(); return err })
			for _, rv := range revocations {
				if rv.Reason != authority.ReasonCACompromise {
					t.Fatalf("revocation reason %q", rv.Reason)
				}
			}
			// Node certificates stay: meshca accepts only those it recorded.
			if _, err := r.RenewNode(ctx, "n1", nodeCertOf(t, r, "n1"), csr(t)); err != nil && !tc.root {
				t.Fatalf("node renewal after an intermediate emergency: %v", err)
			}
			emergency := 0
			for _, e := range events(t, r) {
				if e.Action == authority.ActionCARotateReissue && strings.Contains(e.Detail, "emergency=true") {
					emergency++
				}
			}
			if emergency != n {
				t.Fatalf("%d emergency re-issues audited, want %d", emergency, n)
			}
			t.Logf("emergency rotation (%s) of %d identities: re-keyed %d, revoked %d, %s real", tc.name, n, done.Reissued, done.Revoked, took.Round(time.Millisecond))
			if err := st.Check(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEmergencyRotationResumesAfterAFailedReissue: when a re-key fails the
// emergency rotation has switched but is not done; after a tick without
// progress the call says so, the status names the failure, and the
// rotation finishes once the re-key succeeds.
func TestEmergencyRotationResumesAfterAFailedReissue(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	names := addIdentities(t, r, 5, time.Hour)
	failing := "svc-003"
	r.issuer.failing.Store(&failing)
	r.runRekey(t)
	res := make(chan error, 1)
	go func() {
		_, err := r.EmergencyRotation(ctx, true, "test")
		res <- err
	}()
	// Parked: the emergency rotation on its tick, the re-keying on its
	// retry after the failure.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := clk.WaitForWaiters(wctx, 2); err != nil {
		t.Fatal(err)
	}
	clk.Add(authority.RotationTick)
	err := <-res
	if !errors.Is(err, authority.ErrRotating) || !strings.Contains(err.Error(), "not done") || !strings.Contains(err.Error(), "--wait") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("emergency rotation with a failing re-key returns: %v", err)
	rot := r.RotationStatus()
	if rot == nil || !rot.Emergency || rot.Leaves != 5 || rot.Reissued != 4 || rot.ReissueFailed != 1 || !strings.Contains(rot.WaitingFor, "svc-003: ") {
		t.Fatalf("status = %+v", rot)
	}
	if len(r.CA().Roots()) != 2 {
		t.Fatal("the replaced root left the bundle before every leaf was re-keyed")
	}
	// A retry that fails again is not audited again.
	if res := r.rekey(t); res.Failed != 1 {
		t.Fatalf("retry = %+v", res)
	}
	if phase, _ := r.AdvanceRotation(ctx, acks(0, 0)); phase != store.PhaseReissuing {
		t.Fatalf("phase %q with a failing re-issue", phase)
	}
	failed := 0
	for _, e := range events(t, r) {
		if e.Action == authority.ActionCARotateReissue && e.Outcome == store.OutcomeFailed && e.Identity == "svc-003" {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d audited failures of svc-003's re-issue, want 1", failed)
	}
	r.issuer.failing.Store(nil)
	if res := r.rekey(t); res.Reissued != 1 {
		t.Fatalf("re-key after the signer is back = %+v", res)
	}
	if phase, err := r.AdvanceRotation(ctx, acks(0, 0)); err != nil || phase != "" {
		t.Fatalf("not finished on the next step: %q %v", phase, err)
	}
	if d := r.LastRotation(); d == nil || d.Revoked != len(names) || d.Reissued != len(names) || len(r.CA().Roots()) != 1 {
		t.Fatalf("last rotation = %+v, %d roots", d, len(r.CA().Roots()))
	}
}
