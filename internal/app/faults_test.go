package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

var errInjected = errors.New("injected storage fault")

// faults fails chosen calls of store.Update, counted from 1 since Open.
type faults struct {
	calls atomic.Int64
	mu    sync.Mutex
	fail  map[int64]bool
	hits  atomic.Int64
}

func (f *faults) hook() error {
	n := f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[n] {
		delete(f.fail, n)
		f.hits.Add(1)
		return fmt.Errorf("%w (Update call %d)", errInjected, n)
	}
	return nil
}

// failNext arms failures of the next Update calls at the given offsets:
// 1 is the next call.
func (f *faults) failNext(offsets ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	base := f.calls.Load()
	for _, o := range offsets {
		f.fail[base+int64(o)] = true
	}
}

func (f *faults) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.fail)
}

type faultRig struct {
	t    *testing.T
	st   *store.Store
	reg  *registry.Registry
	clk  *clock.Fake
	f    *faults
	feed *store.Subscription
}

// changes returns what the store's change feed queued so far, without
// waiting (an Update queues its changes before it returns).
func (r *faultRig) changes() []store.Change {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	var out []store.Change
	for {
		b, err := r.feed.Next(done)
		if err != nil {
			return out
		}
		out = append(out, b.Changes...)
	}
}

func newFaultRig(t *testing.T) *faultRig {
	t.Helper()
	clk := clock.NewFake(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	f := &faults{fail: map[int64]bool{}}
	st := testkit.OpenStore(t, filepath.Join(t.TempDir(), "data"), store.Config{Clock: clk, Fault: f.hook})
	td, _ := identity.TrustDomain("mesh.local")
	auth, err := authority.New(context.Background(), authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(context.Background(), registry.Config{Store: st, TrustDomain: td, Issuer: auth, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	r := &faultRig{t: t, st: st, reg: reg, clk: clk, f: f}
	r.feed = st.Subscribe(0)
	t.Cleanup(r.feed.Close)
	return r
}

func (r *faultRig) certs(name string) []store.Cert {
	r.t.Helper()
	var cs []store.Cert
	if err := r.st.View(context.Background(), func(tx *store.Tx) error {
		var err error
		cs, err = tx.CertsFor(name)
		return err
	}); err != nil {
		r.t.Fatal(err)
	}
	return cs
}

func (r *faultRig) events() []registry.Event {
	r.t.Helper()
	evs, err := r.reg.Audit(context.Background(), 0, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	return evs
}

// served returns the serial and leaf of what NodeCredentials hands out for
// ident on node: what the xDS server would put in the node's SDS secret.
func (r *faultRig) served(node, ident string) string {
	r.t.Helper()
	_, creds, err := r.reg.NodeCredentials(context.Background(), node)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, c := range creds {
		if c.Identity == ident {
			leaf := testkit.ParseCertPEM(r.t, c.ChainPEM)
			if got := fmt.Sprintf("%x", leaf.SerialNumber); got != c.Serial {
				r.t.Fatalf("credential serial %s but leaf serial %s", c.Serial, got)
			}
			return c.Serial
		}
	}
	r.t.Fatalf("node %s is served no credential for %s", node, ident)
	return ""
}

func (r *faultRig) check() {
	r.t.Helper()
	if err := r.st.Check(context.Background()); err != nil {
		r.t.Fatalf("store.Check: %v", err)
	}
}

// TestStorageFaultAfterSigning: the Update that records a freshly signed
// certificate fails. The caller must get the error, nothing may be stored or
// served, and the next call after the fault clears must succeed.
func TestStorageFaultAfterSigning(t *testing.T) {
	testkit.Rand(t) // deterministic; logged for uniformity
	ctx := context.Background()
	r := newFaultRig(t)

	if _, err := r.reg.AddIdentity(ctx, registry.AddIdentity{Name: "web"}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.reg.AddNode(ctx, registry.AddNode{Name: "n1", Identities: []string{"web"}}, "test"); err != nil {
		t.Fatal(err)
	}
	s0 := r.served("n1", "web")

	// 1. AddIdentity: the recording Update fails; the denial audit succeeds.
	r.f.failNext(1)
	before := r.f.calls.Load()
	_, err := r.reg.AddIdentity(ctx, registry.AddIdentity{Name: "api2"}, "test")
	if !errors.Is(err, errInjected) {
		t.Fatalf("AddIdentity under a store fault: err = %v, want the injected fault", err)
	}
	if n := r.f.calls.Load() - before; n != 2 {
		t.Errorf("AddIdentity made %d Update calls, want 2 (record, then denial audit)", n)
	}
	if _, err := r.reg.Identity(ctx, "api2"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("identity api2 after a failed record: %v, want not found", err)
	}
	if n := len(r.certs("api2")); n != 0 {
		t.Errorf("%d certificates stored for api2 after a failed record", n)
	}
	evs := r.events()
	last := evs[len(evs)-1]
	if last.Identity != "api2" || last.Outcome != store.OutcomeDenied {
		t.Errorf("last audit record %+v, want a denial of api2", last)
	}
	for _, e := range evs {
		if e.Identity == "api2" && e.Outcome == store.OutcomeOK {
			t.Errorf("an ok audit record for api2 after a failed record: %+v", e)
		}
	}

	// 2. Both the record and the denial audit fail: the original error wins,
	// nothing panics, nothing is written.
	evsBefore := len(r.events())
	r.f.failNext(1, 2)
	_, err = r.reg.AddIdentity(ctx, registry.AddIdentity{Name: "api3"}, "test")
	if !errors.Is(err, errInjected) || !contains(err, "record identity") {
		t.Fatalf("AddIdentity with record and audit failing: err = %v", err)
	}
	if got := len(r.events()); got != evsBefore {
		t.Errorf("audit grew from %d to %d although every write failed", evsBefore, got)
	} else {
		t.Logf("finding: when the store also refuses the denial record, the denial is only logged (audit unchanged at %d records)", got)
	}
	if n := len(r.certs("api3")); n != 0 {
		t.Errorf("%d certificates stored for api3", n)
	}

	// 3. A refusal whose denial audit fails keeps its own error.
	r.f.failNext(1)
	_, err = r.reg.AddIdentity(ctx, registry.AddIdentity{Name: "Bad Name!"}, "test")
	if !errors.Is(err, identity.ErrInvalidName) || errors.Is(err, errInjected) {
		t.Errorf("invalid name with a failing denial audit: err = %v, want ErrInvalidName only", err)
	}
	r.f.clear()

	// 4. ReissueIdentity on a fake clock: the new certificate is signed, its
	// record fails; the node keeps being served the previous certificate.
	r.clk.Add(10 * time.Minute)
	r.changes() // what came before
	r.f.failNext(1)
	_, err = r.reg.ReissueIdentity(ctx, "web", "test")
	if !errors.Is(err, errInjected) || !contains(err, "record certificate") {
		t.Fatalf("ReissueIdentity under a store fault: err = %v", err)
	}
	if got := r.served("n1", "web"); got != s0 {
		t.Errorf("node n1 is served %s after a failed reissue, want the previous %s", got, s0)
	}
	if st, _ := r.reg.Identity(ctx, "web"); st.Cert == nil || st.Cert.Serial != s0 {
		t.Errorf("identity web current certificate changed after a failed reissue: %+v", st.Cert)
	}
	if n := len(r.certs("web")); n != 1 {
		t.Errorf("web has %d certificates after a failed reissue, want 1", n)
	}
	if ch := r.changes(); len(ch) != 0 {
		t.Errorf("the change feed names %v after a failed reissue: nodes would be rebuilt", ch)
	}
	r.check()

	// 5. The fault clears: the next calls succeed.
	st, err := r.reg.ReissueIdentity(ctx, "web", "test")
	if err != nil {
		t.Fatal(err)
	}
	if st.Cert.Serial == s0 || r.served("n1", "web") != st.Cert.Serial {
		t.Errorf("after the fault cleared, n1 is served %s, want the reissued %s", r.served("n1", "web"), st.Cert.Serial)
	}
	if _, err := r.reg.AddIdentity(ctx, registry.AddIdentity{Name: "api2"}, "test"); err != nil {
		t.Fatalf("AddIdentity after the fault cleared: %v", err)
	}
	if n := len(r.certs("api2")); n != 1 {
		t.Errorf("api2 has %d certificates, want 1", n)
	}
	r.check()

	// 6. The identity whose reissue failed can still be revoked.
	if _, err := r.reg.RevokeIdentity(ctx, "web", "keyCompromise", "test"); err != nil {
		t.Errorf("revoke web after faults: %v", err)
	}
	r.check()
	t.Logf("faults injected %d, Update calls %d", r.f.hits.Load(), r.f.calls.Load())
}

// TestStorageFaultsRandom runs random issuing operations while random Update
// calls fail, and checks after every step that a failed call left nothing
// behind and a successful one is fully recorded.
func TestStorageFaultsRandom(t *testing.T) {
	rng := testkit.Rand(t)
	ctx := context.Background()
	r := newFaultRig(t)
	steps := 40
	if testkit.Soak() {
		steps = 400
	}
	names := []string{"a", "b", "c", "d"}
	if _, _, err := r.reg.AddNode(ctx, registry.AddNode{Name: "n1"}, "test"); err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), randReader{rng})
	csr, err := x509.CreateCertificateRequest(randReader{rng}, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	var ok, failed, refused int
	for i := 0; i < steps; i++ {
		name := names[rng.IntN(len(names))]
		// Fail the first Update of the call (the record) with p=0.4, and the
		// second (the denial audit) with p=0.2.
		var arm []int
		if rng.IntN(10) < 4 {
			arm = append(arm, 1)
		}
		if rng.IntN(10) < 2 {
			arm = append(arm, 2)
		}
		r.f.failNext(arm...)
		nBefore := len(r.certs(name))
		curBefore := ""
		if st, err := r.reg.Identity(ctx, name); err == nil && st.Cert != nil {
			curBefore = st.Cert.Serial
		}
		hitsBefore := r.f.hits.Load()
		var serial string
		op := rng.IntN(3)
		switch op {
		case 0:
			var st registry.Status
			st, err = r.reg.AddIdentity(ctx, registry.AddIdentity{Name: name}, "test")
			if err == nil {
				serial = st.Cert.Serial
			}
		case 1:
			var st registry.Status
			st, err = r.reg.ReissueIdentity(ctx, name, "test")
			if err == nil {
				serial = st.Cert.Serial
			}
		case 2:
			var c registry.Cert
			c, err = r.reg.IssueFromCSR(ctx, name, csr, "test")
			if err == nil {
				serial = c.Serial
			}
		}
		r.f.clear()
		if op == 0 && err == nil {
			if _, err := r.reg.Assign(ctx, "n1", name, "test"); err != nil {
				t.Fatalf("assign %s: %v", name, err)
			}
		}
		faulted := r.f.hits.Load() > hitsBefore
		nAfter := len(r.certs(name))
		switch {
		case err == nil:
			ok++
			if nAfter != nBefore+1 {
				t.Fatalf("step %d op %d %s: success but certificates %d -> %d", i, op, name, nBefore, nAfter)
			}
			if op != 2 && r.served("n1", name) != serial {
				t.Fatalf("step %d: %s succeeded with %s but n1 is served %s", i, name, serial, r.served("n1", name))
			}
		default:
			if errors.Is(err, errInjected) {
				failed++
			} else {
				refused++ // exists / not found: the op did not apply
			}
			if faulted && !errors.Is(err, errInjected) && !errors.Is(err, registry.ErrExists) && !errors.Is(err, registry.ErrNotFound) {
				t.Fatalf("step %d: a fault changed the error to %v", i, err)
			}
			if nAfter != nBefore {
				t.Fatalf("step %d op %d %s: failed (%v) but certificates %d -> %d", i, op, name, err, nBefore, nAfter)
			}
			if curBefore != "" && r.served("n1", name) != curBefore {
				t.Fatalf("step %d: failed call changed what n1 is served for %s", i, name)
			}
		}
		r.clk.Add(time.Minute)
	}
	r.check()
	// Every successful issuance in the audit names a stored certificate.
	var issued int
	for _, e := range r.events() {
		if e.Outcome != store.OutcomeOK || e.Serial == "" || strings.HasPrefix(e.Action, "ca.") {
			continue
		}
		issued++
		if err := r.st.View(ctx, func(tx *store.Tx) error { _, err := tx.Cert(e.Serial); return err }); err != nil {
			t.Errorf("audited serial %s (%s) not in the store: %v", e.Serial, e.Action, err)
		}
	}
	t.Logf("steps %d: ok %d, failed by fault %d, refused %d; faults injected %d; audited issuances %d; L=0", steps, ok, failed, refused, r.f.hits.Load(), issued)
}

// randReader feeds seeded bytes to key generation (not for production).
type randReader struct{ r *mrand.Rand }

func (rr randReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(rr.r.Uint32())
	}
	return len(p), nil
}
