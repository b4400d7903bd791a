package testkit_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testkit"
)

// TestCAChainAndTLSCert: a leaf from an intermediate verifies through
// VerifyChain to the root and not to a stranger's root; TLSCert pairs the
// chain with its key only.
func TestCAChainAndTLSCert(t *testing.T) {
	year := time.Now().Add(365 * 24 * time.Hour)
	root := testkit.NewCA(t, pkix.Name{CommonName: "root"}, year, nil)
	inter := testkit.NewCA(t, pkix.Name{CommonName: "inter"}, year, root)
	if !inter.Cert.IsCA || !inter.Cert.MaxPathLenZero || inter.Cert.CheckSignatureFrom(root.Cert) != nil {
		t.Fatalf("intermediate: CA %t, path length zero %t", inter.Cert.IsCA, inter.Cert.MaxPathLenZero)
	}
	key := testkit.Key(t)
	u, _ := url.Parse("spiffe://mesh.local/web")
	leaf := inter.Sign(t, &x509.Certificate{SerialNumber: testkit.Serial(t), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, key.Public())

	pair := testkit.Pair(leaf, key, inter.Cert)
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	certs, chains, err := testkit.VerifyChain(pair.Certificate, x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil || len(certs) != 2 || len(chains) != 1 || len(chains[0]) != 3 {
		t.Fatalf("verify: %d certificates, chains %v: %v", len(certs), chains, err)
	}
	stranger := x509.NewCertPool()
	stranger.AddCert(testkit.NewCA(t, pkix.Name{CommonName: "stranger"}, year, nil).Cert)
	if _, _, err := testkit.VerifyChain(pair.Certificate, x509.VerifyOptions{Roots: stranger}); err == nil {
		t.Fatal("a chain verified against a stranger's root")
	}
	if _, _, err := testkit.VerifyChain(nil, x509.VerifyOptions{Roots: roots}); err == nil {
		t.Fatal("no certificate verified")
	}

	chainPEM := string(testkit.CertPEM(leaf.Raw)) + string(testkit.CertPEM(inter.Cert.Raw))
	if got := testkit.ChainDER(chainPEM); len(got) != 2 || string(got[1]) != string(inter.Cert.Raw) {
		t.Fatalf("ChainDER: %d blocks", len(got))
	}
	c, err := testkit.TLSCert(chainPEM, key)
	if err != nil || c.Leaf.SerialNumber.Cmp(leaf.SerialNumber) != 0 || len(c.Certificate) != 2 {
		t.Fatalf("TLSCert: %v", err)
	}
	if _, err := testkit.TLSCert(chainPEM, testkit.Key(t)); err == nil {
		t.Fatal("TLSCert paired a chain with another key")
	}
	if _, err := testkit.TLSCert("", key); err == nil {
		t.Fatal("TLSCert accepted an empty chain")
	}
	if got := testkit.ParseCertPEM(t, []byte(chainPEM)); got.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatal("ParseCertPEM did not return the first certificate")
	}
}

// TestNewCSR: the request is signed by the returned key and names nothing.
func TestNewCSR(t *testing.T) {
	key, csrPEM := testkit.NewCSR(t)
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("not a PEM certificate request: %q", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("request: %v", err)
	}
	if !key.PublicKey.Equal(csr.PublicKey) || csr.Subject.String() != "" || len(csr.URIs)+len(csr.DNSNames) != 0 {
		t.Fatalf("request for another key or with names: %s", csr.Subject)
	}
	if k := testkit.KeyPEM(t, key); len(k) == 0 {
		t.Fatal("no key PEM")
	}
}

// TestRevoked reads every serial of every CRL in the PEM, in lowercase hex.
func TestRevoked(t *testing.T) {
	ca := testkit.NewCA(t, pkix.Name{CommonName: "ca"}, time.Now().Add(time.Hour), nil)
	var all []byte
	for i, serials := range [][]int64{{0xab, 0x1f}, {0x2c}} {
		var entries []x509.RevocationListEntry
		for _, s := range serials {
			entries = append(entries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: time.Now()})
		}
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(int64(i + 1)), ThisUpdate: time.Now(),
			NextUpdate: time.Now().Add(time.Hour), RevokedCertificateEntries: entries}, ca.Cert, ca.Key)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})...)
	}
	if n := len(testkit.ParseCRLs(t, all)); n != 2 {
		t.Fatalf("%d CRLs, want 2", n)
	}
	got := testkit.Revoked(t, all)
	if len(got) != 3 || !got["ab"] || !got["1f"] || !got["2c"] {
		t.Fatalf("revoked %v, want ab, 1f and 2c", got)
	}
}

// TestRandReplays: MESHCA_SEED makes the source draw the same numbers.
func TestRandReplays(t *testing.T) {
	t.Setenv("MESHCA_SEED", "42")
	a, b := testkit.Rand(t), testkit.Rand(t)
	for range 8 {
		if x, y := a.Uint64(), b.Uint64(); x != y {
			t.Fatalf("seed 42 drew %d and %d", x, y)
		}
	}
	t.Setenv("MESHCA_SEED", "forty-two")
	ft := &fatalTB{TB: t}
	func() {
		defer func() { recover() }()
		testkit.Rand(ft)
	}()
	if !ft.failed {
		t.Fatal("a malformed MESHCA_SEED was accepted")
	}
}

// TestLoopbackConfigAndFreePort: the configuration binds loopback only, on
// ports the kernel picks, in the given directory.
func TestLoopbackConfigAndFreePort(t *testing.T) {
	cfg := testkit.LoopbackConfig("/tmp/x")
	if cfg.DataDir != "/tmp/x" || cfg.Admin.Listen != "127.0.0.1:0" || cfg.XDS.Listen != "127.0.0.1:0" {
		t.Fatalf("config: data %s admin %s xds %s", cfg.DataDir, cfg.Admin.Listen, cfg.XDS.Listen)
	}
	p, err := strconv.Atoi(testkit.FreePort(t))
	if err != nil || p <= 0 || p > 65535 {
		t.Fatalf("port %d: %v", p, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("the free port %d could not be bound: %v", p, err)
	}
	ln.Close()
}

// fatalTB records Fatal instead of ending the test; Fatalf panics so that
// the helper stops as it would.
type fatalTB struct {
	testing.TB
	failed bool
}

func (f *fatalTB) Fatalf(string, ...any) { f.failed = true; panic("fatal") }
func (f *fatalTB) Helper()               {}
