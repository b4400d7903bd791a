package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// dataDir is a fresh 0700 data directory.
func dataDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openStore(t testing.TB, dir string) *store.Store {
	t.Helper()
	return testkit.OpenStore(t, dir, store.Config{})
}

func newRegistry(t testing.TB, st *store.Store, clk clock.Clock) *Registry {
	t.Helper()
	return newRegistryWith(t, Config{Store: st, Clock: clk})
}

// newRegistryWith builds a registry on cfg (trust domain mesh.local), with
// an authority on the same store and clock as its Issuer.
func newRegistryWith(t testing.TB, cfg Config) *Registry {
	t.Helper()
	td, _ := identity.TrustDomain("mesh.local")
	cfg.TrustDomain = td
	auth, err := authority.New(context.Background(), authority.Config{Store: cfg.Store, TrustDomain: td, Lifetimes: cfg.Lifetimes, Clock: cfg.Clock})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Issuer = auth
	r, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// caOf is the CA in use of r's Issuer.
func caOf(r *Registry) *ca.CA { return r.cfg.Issuer.(*authority.Authority).CA() }

func events(t *testing.T, r *Registry) []Event {
	t.Helper()
	evs, err := r.Audit(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func certCount(t *testing.T, st *store.Store, name string) int {
	t.Helper()
	var n int
	if err := st.View(context.Background(), func(tx *store.Tx) error {
		cs, err := tx.CertsFor(name)
		n = len(cs)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAddIdentityRecordsCertAndAudit(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)

	got, err := r.AddIdentity(ctx, AddIdentity{Name: "echo", DNSNames: []string{"echo.mesh.local"}, TTL: 30 * time.Minute}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if got.Cert == nil || got.CertState != "valid" || got.Identity.CurrentSerial != got.Cert.Serial {
		t.Fatalf("status = %+v", got)
	}
	if want := t0.Add(-time.Minute); !got.Cert.NotBefore.Equal(want) || !got.Cert.NotAfter.Equal(want.Add(30*time.Minute)) {
		t.Fatalf("validity %s..%s", got.Cert.NotBefore, got.Cert.NotAfter)
	}
	evs := events(t, r)
	if len(evs) != 3 || evs[0].Action != authority.ActionCAInit || evs[1].Action != ActionIdentityAdd || evs[2].Action != ActionCertIssue || evs[2].Serial != got.Cert.Serial {
		t.Fatalf("audit = %+v", evs)
	}
	// The stored key is the one that matches the certificate.
	if err := st.View(ctx, func(tx *store.Tx) error {
		c, err := tx.Credential(got.Cert.Serial)
		if err != nil {
			return err
		}
		k, err := x509.ParsePKCS8PrivateKey(c.Key)
		if err != nil {
			return err
		}
		leaf, err := x509.ParseCertificate(c.DER)
		if err != nil {
			return err
		}
		if !k.(*ecdsa.PrivateKey).PublicKey.Equal(leaf.PublicKey) {
			t.Error("stored key does not match the certificate")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	clk.Add(31 * time.Minute)
	if st, _ := r.Identity(ctx, "echo"); st.CertState != "expired" {
		t.Fatalf("after NotAfter: state %q", st.CertState)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRefusalsAreAuditedAndIssueNothing(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "echo"}, "test"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  AddIdentity
		want error
	}{
		{name: "duplicate", req: AddIdentity{Name: "echo"}, want: ErrExists},
		{name: "bad name", req: AddIdentity{Name: "a b"}, want: identity.ErrInvalidName},
		{name: "reserved", req: AddIdentity{Name: "meshca"}, want: identity.ErrInvalidName},
		{name: "bad dns", req: AddIdentity{Name: "x", DNSNames: []string{"not a host!"}}, want: identity.ErrInvalidDNSName},
		{name: "ttl short", req: AddIdentity{Name: "x", TTL: time.Minute}, want: ca.ErrTTL},
		{name: "ttl long", req: AddIdentity{Name: "x", TTL: 31 * 24 * time.Hour}, want: ca.ErrTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(events(t, r))
			if _, err := r.AddIdentity(ctx, tt.req, "test"); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			evs := events(t, r)
			if len(evs) != before+1 || evs[len(evs)-1].Outcome != store.OutcomeDenied {
				t.Fatalf("refusal not audited as denied: %+v", evs[before:])
			}
			if n := certCount(t, st, tt.req.Name); tt.req.Name != "echo" && n != 0 {
				t.Fatalf("%d certificates issued for a refused request", n)
			}
		})
	}
	if n := certCount(t, st, "echo"); n != 1 {
		t.Fatalf("echo has %d certificates, want 1", n)
	}
}

func TestLintFailureIsAuditedAndNotStored(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	r.issue = func(context.Context, ca.Request) (*ca.Issued, string, error) {
		return nil, "", &ca.LintError{Lints: []string{"e_subject_common_name_max_length"}}
	}
	_, err := r.AddIdentity(ctx, AddIdentity{Name: "echo"}, "test")
	if !errors.Is(err, ca.ErrLint) {
		t.Fatalf("err = %v, want ErrLint", err)
	}
	if _, err := r.Identity(ctx, "echo"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("identity recorded after a lint failure: %v", err)
	}
	evs := events(t, r)
	last := evs[len(evs)-1]
	if last.Action != ActionCertIssue || last.Outcome != store.OutcomeFailed || last.Identity != "echo" {
		t.Fatalf("last audit = %+v", last)
	}
	if n := certCount(t, st, "echo"); n != 0 {
		t.Fatalf("%d certificates stored", n)
	}
}
