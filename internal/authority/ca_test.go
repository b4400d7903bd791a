package authority_test

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
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

func TestCASurvivesRestart(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	r := newRig(t, st, clock.NewFake(t0))
	issuer := r.CA().Issuer()
	bundle := r.CA().BundlePEM()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRig(t, st, clock.NewFake(t0))
	if !r.CA().Issuer().Equal(issuer) || string(r.CA().BundlePEM()) != string(bundle) {
		t.Fatal("CA changed across a restart")
	}
	if n := len(events(t, r)); n != 1 {
		t.Fatalf("%d audit records, want 1 (one ca.init)", n)
	}
	// The reloaded CA still issues chains that verify.
	got, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	verify(t, r, got.Cert.Serial, st)
}

func verify(t *testing.T, r *rig, serial string, st *store.Store) {
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
	r := newRig(t, st, clock.NewFake(t0))
	chain, key := orgCA(t, t0)
	if err := r.ImportCA(ctx, chain, key, "test"); err != nil {
		t.Fatal(err)
	}
	if got := r.CA().Issuer().Subject.CommonName; got != "Org meshca CA" {
		t.Fatalf("issuer after import = %q", got)
	}
	got, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	verify(t, r, got.Cert.Serial, st)

	// Once a certificate is out, another import is refused and audited.
	chain2, key2 := orgCA(t, t0)
	if err := r.ImportCA(ctx, chain2, key2, "test"); !errors.Is(err, authority.ErrCAInUse) {
		t.Fatalf("second import: err = %v, want authority.ErrCAInUse", err)
	}
	evs := events(t, r)
	if last := evs[len(evs)-1]; last.Action != authority.ActionCAImport || last.Outcome != store.OutcomeDenied {
		t.Fatalf("last audit = %+v", last)
	}
	// A key that does not match is refused.
	_, otherKey := orgCA(t, t0)
	st2 := openStore(t, dataDir(t))
	r2 := newRig(t, st2, clock.NewFake(t0))
	if err := r2.ImportCA(ctx, chain, otherKey, "test"); !errors.Is(err, ca.ErrKeyMismatch) {
		t.Fatalf("mismatched key: err = %v", err)
	}

	// The imported CA survives a restart.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRig(t, st, clock.NewFake(t0))
	if got := r.CA().Issuer().Subject.CommonName; got != "Org meshca CA" {
		t.Fatalf("issuer after restart = %q", got)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestServerCertRenewsAtHalfLife(t *testing.T) {
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	sc, err := r.ServerCert([]string{"meshca.mesh.local"}, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	first, err := sc.Get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if u := first.Leaf.URIs; len(u) != 1 || u[0].String() != "spiffe://mesh.local/meshca" {
		t.Fatalf("server SAN = %v", u)
	}
	clk.Add(58 * time.Minute) // NotBefore is backdated 1m: half-life is at +59m
	same, _ := sc.Get(nil)
	if same != first {
		t.Fatal("renewed before half-life")
	}
	clk.Add(2 * time.Minute)
	renewed, err := sc.Get(nil)
	if err != nil || renewed == first || renewed.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatalf("not renewed after half-life: %v", err)
	}
	n := 0
	for _, e := range events(t, r) {
		if e.Action == authority.ActionCertIssue && e.Identity == "meshca" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d server issuances audited, want 2", n)
	}
	if err := st.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// The authority refuses out-of-range lifetimes with the message of
// LeafTTL, for meshca's server certificate and in its own Lifetimes, and
// generates its CA with the Lifetimes it is given.
func TestAuthorityTakesLifetimes(t *testing.T) {
	ctx := context.Background()
	td, _ := identity.TrustDomain("mesh.local")
	st := openStore(t, dataDir(t))
	defer st.Close()
	clk := clock.NewFake(t0)

	bad := authority.Default()
	bad.Node = time.Minute
	if _, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk, Lifetimes: bad}); err == nil ||
		!strings.Contains(err.Error(), authority.LeafTTL.Check(time.Minute).Error()) {
		t.Fatalf("New with a 1m node lifetime: %v", err)
	}
	life := authority.Default()
	life.Leaf, life.Intermediate = 2*time.Hour, 72*time.Hour
	a, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk, Lifetimes: life})
	if err != nil {
		t.Fatal(err)
	}
	if is := a.CA().Issuer(); is.NotAfter.Sub(is.NotBefore) != life.Intermediate {
		t.Fatalf("generated intermediate lives %s, want %s", is.NotAfter.Sub(is.NotBefore), life.Intermediate)
	}
	for _, ttl := range []time.Duration{time.Minute, 4*time.Minute + 59*time.Second, 720*time.Hour + time.Second, -time.Hour} {
		want := authority.LeafTTL.Check(ttl).Error()
		if _, err := a.ServerCert(nil, ttl); !errors.Is(err, ca.ErrTTL) || !strings.HasSuffix(err.Error(), want) {
			t.Errorf("ServerCert ttl %s: %v, want ca.ErrTTL ending %q", ttl, err, want)
		}
	}
}
