package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
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
	sealer, err := seal.LoadOrCreate(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: dir, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newRegistry(t testing.TB, st *store.Store, clk clock.Clock) *Registry {
	t.Helper()
	td, _ := identity.TrustDomain("mesh.local")
	r, err := New(context.Background(), Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

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
	if len(evs) != 3 || evs[0].Action != ActionCAInit || evs[1].Action != ActionIdentityAdd || evs[2].Action != ActionCertIssue || evs[2].Serial != got.Cert.Serial {
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
	r.issue = func(context.Context, ca.Request) (*ca.Issued, error) {
		return nil, &ca.LintError{Lints: []string{"e_subject_common_name_max_length"}}
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

func TestCASurvivesRestart(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	r := newRegistry(t, st, clock.NewFake(t0))
	issuer := r.CA().Issuer()
	bundle := r.CA().BundlePEM()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRegistry(t, st, clock.NewFake(t0))
	if !r.CA().Issuer().Equal(issuer) || string(r.CA().BundlePEM()) != string(bundle) {
		t.Fatal("CA changed across a restart")
	}
	if n := len(events(t, r)); n != 1 {
		t.Fatalf("%d audit records, want 1 (one ca.init)", n)
	}
	// The reloaded CA still issues chains that verify.
	got, err := r.AddIdentity(ctx, AddIdentity{Name: "echo"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	verify(t, r, got.Cert.Serial, st)
}

func verify(t *testing.T, r *Registry, serial string, st *store.Store) {
	t.Helper()
	var c store.Cert
	if err := st.View(context.Background(), func(tx *store.Tx) (err error) { c, err = tx.Cert(serial); return err }); err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.DER)
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, root := range r.CA().Roots() {
		roots.AddCert(root)
	}
	for _, der := range c.Chain {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: leaf.NotBefore.Add(time.Minute)}); err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
}

// orgCA makes an organisation root and an intermediate under it, as PEM.
func orgCA(t *testing.T, now time.Time) (chainPEM, keyPEM []byte) {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	root := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Org Root", Organization: []string{"Org"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ = x509.ParseCertificate(rootDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	inter := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Org meshca CA", Organization: []string{"Org"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, inter, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	chainPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})...)
	return chainPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func TestImportCA(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	r := newRegistry(t, st, clock.NewFake(t0))
	chain, key := orgCA(t, t0)
	if err := r.ImportCA(ctx, chain, key, "test"); err != nil {
		t.Fatal(err)
	}
	if got := r.CA().Issuer().Subject.CommonName; got != "Org meshca CA" {
		t.Fatalf("issuer after import = %q", got)
	}
	got, err := r.AddIdentity(ctx, AddIdentity{Name: "echo"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	verify(t, r, got.Cert.Serial, st)

	// Once a certificate is out, another import is refused and audited.
	chain2, key2 := orgCA(t, t0)
	if err := r.ImportCA(ctx, chain2, key2, "test"); !errors.Is(err, ErrCAInUse) {
		t.Fatalf("second import: err = %v, want ErrCAInUse", err)
	}
	evs := events(t, r)
	if last := evs[len(evs)-1]; last.Action != ActionCAImport || last.Outcome != store.OutcomeDenied {
		t.Fatalf("last audit = %+v", last)
	}
	// A key that does not match is refused.
	_, otherKey := orgCA(t, t0)
	st2 := openStore(t, dataDir(t))
	r2 := newRegistry(t, st2, clock.NewFake(t0))
	if err := r2.ImportCA(ctx, chain, otherKey, "test"); !errors.Is(err, ca.ErrKeyMismatch) {
		t.Fatalf("mismatched key: err = %v", err)
	}

	// The imported CA survives a restart.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRegistry(t, st, clock.NewFake(t0))
	if got := r.CA().Issuer().Subject.CommonName; got != "Org meshca CA" {
		t.Fatalf("issuer after restart = %q", got)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}
