package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("mesh.local")
	testNow = time.Date(2030, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
)

func newCA(t testing.TB, alg ca.KeyAlgorithm, clk clock.Clock) (*ca.CA, *ca.Material) {
	t.Helper()
	m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, KeyAlgorithm: alg, Now: clk.Now()})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	c, err := ca.New(ca.Config{TrustDomain: td, Material: m, KeyAlgorithm: alg, Clock: clk})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, m
}

func verifyLeaf(t *testing.T, c *ca.CA, is *ca.Issued, at time.Time) {
	t.Helper()
	roots := x509.NewCertPool()
	for _, r := range c.Roots() {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, d := range is.Chain {
		ic, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatalf("parse chain: %v", err)
		}
		inter.AddCert(ic)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := is.Cert.Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: inter, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{usage},
		}); err != nil {
			t.Fatalf("verify for %v: %v", usage, err)
		}
	}
}

func TestIssueKeyAlgorithms(t *testing.T) {
	tests := []struct {
		name      string
		alg       ca.KeyAlgorithm
		wantKeyEn bool
	}{
		{name: "ecdsa-p256", alg: ca.ECDSAP256},
		{name: "ecdsa-p384", alg: ca.ECDSAP384},
		{name: "rsa-2048", alg: ca.RSA2048, wantKeyEn: true},
		{name: "rsa-3072", alg: ca.RSA3072, wantKeyEn: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clock.NewFake(testNow)
			c, m := newCA(t, tt.alg, clk)
			id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
			dns := []string{"web.mesh.local", "web"}
			is, err := c.Issue(context.Background(), ca.Request{ID: id, DNSNames: dns, TTL: time.Hour})
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			verifyLeaf(t, c, is, clk.Now())
			leaf := is.Cert
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
				t.Errorf("URI SANs = %v, want [%s]", leaf.URIs, id)
			}
			if !slices.Equal(leaf.DNSNames, dns) {
				t.Errorf("DNS SANs = %v, want %v", leaf.DNSNames, dns)
			}
			if len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("unexpected SANs: %v %v", leaf.IPAddresses, leaf.EmailAddresses)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
			}
			if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || (leaf.KeyUsage&x509.KeyUsageKeyEncipherment != 0) != tt.wantKeyEn {
				t.Errorf("KeyUsage = %b", leaf.KeyUsage)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if leaf.SerialNumber.Sign() <= 0 || len(leaf.SerialNumber.Bytes()) > 16 {
				t.Errorf("serial %x: want positive, at most 16 bytes", leaf.SerialNumber)
			}
			if is.Serial != leaf.SerialNumber.Text(16) {
				t.Errorf("Serial = %q, want %q", is.Serial, leaf.SerialNumber.Text(16))
			}
			if leaf.Subject.CommonName != "ns/prod/sa/web" || !slices.Equal(leaf.Subject.Organization, []string{"mesh.local"}) {
				t.Errorf("subject = %v", leaf.Subject)
			}
			if !bytes.Equal(leaf.AuthorityKeyId, m.Issuer.SubjectKeyId) {
				t.Errorf("AKI %x != issuer SKI %x", leaf.AuthorityKeyId, m.Issuer.SubjectKeyId)
			}
			if is.Key == nil || !is.Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
				t.Fatal("Issued.Key does not match the certificate")
			}
			k8, err := x509.ParsePKCS8PrivateKey(is.KeyPKCS8)
			if err != nil || !k8.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
				t.Fatalf("KeyPKCS8 does not hold the leaf key: %v", err)
			}
			if len(is.Chain) != 1 || !bytes.Equal(is.Chain[0], m.Issuer.Raw) {
				t.Errorf("chain should be just the issuer")
			}
			if got := strings.Count(string(c.ChainPEM(is)), "BEGIN CERTIFICATE"); got != 2 {
				t.Errorf("ChainPEM has %d certificates, want 2", got)
			}
			if got := strings.Count(string(c.BundlePEM()), "BEGIN CERTIFICATE"); got != 1 {
				t.Errorf("BundlePEM has %d certificates, want 1", got)
			}
			if n := ca.RealSigns(c); n != 1 {
				t.Errorf("real signatures = %d, want 1", n)
			}
		})
	}
}

func TestGenerate(t *testing.T) {
	m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	root, inter := m.Roots[0], m.Issuer
	wantNB := testNow.Add(-time.Minute).Truncate(time.Second)
	tests := []struct {
		name     string
		cert     *x509.Certificate
		cn       string
		notAfter time.Time
		pathZero bool
	}{
		{name: "root", cert: root, cn: "meshca root CA", notAfter: wantNB.Add(87600 * time.Hour)},
		{name: "intermediate", cert: inter, cn: "meshca intermediate CA", notAfter: wantNB.Add(8760 * time.Hour), pathZero: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cert
			if !c.IsCA || c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("IsCA=%v KeyUsage=%b", c.IsCA, c.KeyUsage)
			}
			if c.Subject.CommonName != tt.cn || !slices.Equal(c.Subject.Organization, []string{"mesh.local"}) {
				t.Errorf("subject = %v", c.Subject)
			}
			if !c.NotBefore.Equal(wantNB) || !c.NotAfter.Equal(tt.notAfter) {
				t.Errorf("validity %v..%v, want %v..%v", c.NotBefore, c.NotAfter, wantNB, tt.notAfter)
			}
			if tt.pathZero && (c.MaxPathLen != 0 || !c.MaxPathLenZero) {
				t.Errorf("MaxPathLen=%d MaxPathLenZero=%v", c.MaxPathLen, c.MaxPathLenZero)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %x", c.SerialNumber)
			}
		})
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate not signed by root: %v", err)
	}
	if m.RootKey == nil || len(m.Chain) != 0 {
		t.Errorf("RootKey nil=%v, Chain %d", m.RootKey == nil, len(m.Chain))
	}

	bad := []struct {
		name string
		opts ca.GenerateOptions
		want error
	}{
		{name: "no trust domain", opts: ca.GenerateOptions{Now: testNow}, want: ca.ErrConfig},
		{name: "no now", opts: ca.GenerateOptions{TrustDomain: td}, want: ca.ErrConfig},
		{name: "intermediate outlives root", opts: ca.GenerateOptions{TrustDomain: td, Now: testNow, RootTTL: time.Hour, IntermediateTTL: 2 * time.Hour}, want: ca.ErrConfig},
		{name: "unknown algorithm", opts: ca.GenerateOptions{TrustDomain: td, Now: testNow, KeyAlgorithm: "dsa"}, want: ca.ErrKeyAlgorithm},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ca.Generate(tt.opts); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestValidityWindow(t *testing.T) {
	id := spiffeid.RequireFromPath(td, "/api")
	t.Run("exact window", func(t *testing.T) {
		clk := clock.NewFake(testNow)
		c, _ := newCA(t, ca.ECDSAP256, clk)
		clk.Add(10 * time.Minute)
		tests := []struct {
			name string
			ttl  time.Duration
		}{
			{name: "min", ttl: ca.MinTTL},
			{name: "1h", ttl: time.Hour},
			{name: "max", ttl: ca.MaxTTL},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: tt.ttl})
				if err != nil {
					t.Fatal(err)
				}
				wantNB := clk.Now().Add(-time.Minute).Truncate(time.Second)
				if !is.Cert.NotBefore.Equal(wantNB) {
					t.Errorf("NotBefore = %v, want %v", is.Cert.NotBefore, wantNB)
				}
				if want := wantNB.Add(tt.ttl); !is.Cert.NotAfter.Equal(want) {
					t.Errorf("NotAfter = %v, want %v", is.Cert.NotAfter, want)
				}
			})
		}
	})
	t.Run("custom backdate", func(t *testing.T) {
		clk := clock.NewFake(testNow)
		m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: testNow.Add(-time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		c, err := ca.New(ca.Config{TrustDomain: td, Material: m, Clock: clk, Backdate: 5 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if want := testNow.Add(-5 * time.Minute).Truncate(time.Second); !is.Cert.NotBefore.Equal(want) {
			t.Errorf("NotBefore = %v, want %v", is.Cert.NotBefore, want)
		}
	})
	t.Run("capped at issuer", func(t *testing.T) {
		clk := clock.NewFake(testNow)
		// The intermediate's NotBefore is now-1m, so it expires 30m from now.
		m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: testNow, IntermediateTTL: 31 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		c, err := ca.New(ca.Config{TrustDomain: td, Material: m, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		if d := m.Issuer.NotAfter.Sub(testNow); d > 30*time.Minute || d < 29*time.Minute {
			t.Fatalf("issuer expires in %v", d)
		}
		is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if !is.Cert.NotAfter.Equal(m.Issuer.NotAfter) {
			t.Errorf("NotAfter = %v, want issuer's %v", is.Cert.NotAfter, m.Issuer.NotAfter)
		}
		verifyLeaf(t, c, is, clk.Now())

		for _, after := range []time.Duration{0, time.Second, 24 * time.Hour} {
			clk.Set(m.Issuer.NotAfter.Add(after))
			if _, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: time.Hour}); !errors.Is(err, ca.ErrIssuerExpired) {
				t.Errorf("at issuer NotAfter+%v: err = %v, want ErrIssuerExpired", after, err)
			}
		}
		if n := ca.RealSigns(c); n != 1 {
			t.Errorf("real signatures = %d, want 1", n)
		}
	})
}

// csrDER makes a PKCS#10 request for key with whatever a hostile client
// might put in it.
func csrDER(t *testing.T, key crypto.Signer, hostile bool) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	if hostile {
		bc, err := asn1.Marshal(struct {
			IsCA       bool `asn1:"optional"`
			MaxPathLen int  `asn1:"optional,default:-1"`
		}{IsCA: true, MaxPathLen: 5})
		if err != nil {
			t.Fatal(err)
		}
		evil, _ := url.Parse("spiffe://mesh.local/admin")
		tmpl = &x509.CertificateRequest{
			Subject:        pkix.Name{CommonName: "admin", Organization: []string{"evil"}},
			DNSNames:       []string{"evil.example.com", "*.mesh.local"},
			IPAddresses:    []net.IP{net.ParseIP("10.0.0.1")},
			EmailAddresses: []string{"root@example.com"},
			URIs:           []*url.URL{evil},
			ExtraExtensions: []pkix.Extension{
				{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc},
				{Id: asn1.ObjectIdentifier{1, 2, 3, 4, 5}, Value: []byte{0x05, 0x00}},
			},
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestIssueRefusals(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	badSig := csrDER(t, ecKey, false)
	badSig[len(badSig)-3] ^= 0xff
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	id := spiffeid.RequireFromPath(td, "/web")
	longPath := spiffeid.RequireFromPath(td, "/"+strings.Repeat("a", identity.MaxIDLength))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		ctx  context.Context
		req  ca.Request
		want []error
	}{
		{name: "zero ID", req: ca.Request{TTL: time.Hour}, want: []error{ca.ErrInvalidRequest}},
		{name: "foreign trust domain", req: ca.Request{ID: spiffeid.RequireFromString("spiffe://other.local/web"), TTL: time.Hour}, want: []error{identity.ErrForeignTrustDomain, ca.ErrInvalidRequest}},
		{name: "trust domain ID without path", req: ca.Request{ID: td.ID(), TTL: time.Hour}, want: []error{ca.ErrInvalidRequest, identity.ErrInvalidName}},
		{name: "ID too long", req: ca.Request{ID: longPath, TTL: time.Hour}, want: []error{ca.ErrInvalidRequest, identity.ErrInvalidName}},
		{name: "DNS not a host", req: ca.Request{ID: id, DNSNames: []string{"not a host!"}, TTL: time.Hour}, want: []error{identity.ErrInvalidDNSName, ca.ErrInvalidRequest}},
		{name: "DNS IP address", req: ca.Request{ID: id, DNSNames: []string{"10.0.0.1"}, TTL: time.Hour}, want: []error{identity.ErrInvalidDNSName}},
		{name: "DNS uppercase", req: ca.Request{ID: id, DNSNames: []string{"Web.Mesh.Local"}, TTL: time.Hour}, want: []error{identity.ErrInvalidDNSName}},
		{name: "DNS URI smuggled", req: ca.Request{ID: id, DNSNames: []string{"spiffe://mesh.local/admin"}, TTL: time.Hour}, want: []error{identity.ErrInvalidDNSName}},
		{name: "TTL 1m", req: ca.Request{ID: id, TTL: time.Minute}, want: []error{ca.ErrTTL}},
		{name: "TTL 31 days", req: ca.Request{ID: id, TTL: 31 * 24 * time.Hour}, want: []error{ca.ErrTTL}},
		{name: "TTL 0", req: ca.Request{ID: id}, want: []error{ca.ErrTTL}},
		{name: "TTL negative", req: ca.Request{ID: id, TTL: -time.Hour}, want: []error{ca.ErrTTL}},
		{name: "CSR bad signature", req: ca.Request{ID: id, TTL: time.Hour, CSR: badSig}, want: []error{ca.ErrInvalidRequest}},
		{name: "CSR garbage", req: ca.Request{ID: id, TTL: time.Hour, CSR: []byte("garbage, not DER")}, want: []error{ca.ErrInvalidRequest}},
		{name: "CSR empty", req: ca.Request{ID: id, TTL: time.Hour, CSR: []byte{}}, want: []error{ca.ErrInvalidRequest}},
		{name: "CSR RSA-1024", req: ca.Request{ID: id, TTL: time.Hour, CSR: csrDER(t, rsa1024, false)}, want: []error{ca.ErrInvalidRequest, ca.ErrKeyAlgorithm}},
		{name: "CSR P-224", req: ca.Request{ID: id, TTL: time.Hour, CSR: csrDER(t, p224, false)}, want: []error{ca.ErrInvalidRequest}},
		{name: "cancelled context", ctx: cancelled, req: ca.Request{ID: id, TTL: time.Hour}, want: []error{context.Canceled}},
	}
	clk := clock.NewFake(testNow)
	c, _ := newCA(t, ca.ECDSAP256, clk)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			is, err := c.Issue(ctx, tt.req)
			if is != nil {
				t.Errorf("issued %v", is.Cert.Subject)
			}
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Errorf("err = %v, want errors.Is %v", err, want)
				}
			}
		})
	}
	if n := ca.RealSigns(c); n != 0 {
		t.Fatalf("real signatures = %d after refusals, want 0", n)
	}
}

func TestIssueFromHostileCSR(t *testing.T) {
	clk := clock.NewFake(testNow)
	c, _ := newCA(t, ca.ECDSAP256, clk)
	tests := []struct {
		name string
		key  func() crypto.Signer
	}{
		{name: "ecdsa", key: func() crypto.Signer { k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader); return k }},
		{name: "rsa", key: func() crypto.Signer { k, _ := rsa.GenerateKey(rand.Reader, 2048); return k }},
	}
	id := spiffeid.RequireFromPath(td, "/web")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key()
			is, err := c.Issue(context.Background(), ca.Request{ID: id, DNSNames: []string{"web.mesh.local"}, TTL: time.Hour, CSR: csrDER(t, key, true)})
			if err != nil {
				t.Fatal(err)
			}
			leaf := is.Cert
			if leaf.IsCA {
				t.Error("leaf from a CA:TRUE CSR is a CA")
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || !slices.Equal(leaf.DNSNames, []string{"web.mesh.local"}) ||
				len(leaf.IPAddresses) != 0 || len(leaf.EmailAddresses) != 0 {
				t.Errorf("SANs: URIs %v DNS %v IP %v email %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.Subject.CommonName != "web" || !slices.Equal(leaf.Subject.Organization, []string{"mesh.local"}) {
				t.Errorf("subject = %v", leaf.Subject)
			}
			for _, ext := range leaf.Extensions {
				if ext.Id.Equal(asn1.ObjectIdentifier{1, 2, 3, 4, 5}) {
					t.Error("CSR extension copied into the leaf")
				}
			}
			if d := leaf.NotAfter.Sub(leaf.NotBefore); d != time.Hour {
				t.Errorf("lifetime %v, want 1h", d)
			}
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
				t.Error("leaf key is not the CSR key")
			}
			if is.Key != nil || is.KeyPKCS8 != nil {
				t.Error("Issued carries a key for a CSR request")
			}
			verifyLeaf(t, c, is, clk.Now())
		})
	}
}

func TestLongIDOmitsCommonName(t *testing.T) {
	clk := clock.NewFake(testNow)
	c, _ := newCA(t, ca.ECDSAP256, clk)
	tests := []struct {
		name   string
		path   string
		wantCN string
	}{
		{name: "64 bytes", path: strings.Repeat("a", 64), wantCN: strings.Repeat("a", 64)},
		{name: "65 bytes", path: strings.Repeat("a", 65), wantCN: ""},
		{name: "long nested", path: strings.Repeat("segment/", 40) + "x", wantCN: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := spiffeid.RequireFromPath(td, "/"+tt.path)
			is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if is.Cert.Subject.CommonName != tt.wantCN {
				t.Errorf("CN = %q, want %q", is.Cert.Subject.CommonName, tt.wantCN)
			}
		})
	}
}

func TestNewRefusals(t *testing.T) {
	m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	mismatched := *m
	mismatched.IssuerKey = other.IssuerKey
	tests := []struct {
		name string
		cfg  ca.Config
		want error
	}{
		{name: "no trust domain", cfg: ca.Config{Material: m}, want: ca.ErrConfig},
		{name: "no material", cfg: ca.Config{TrustDomain: td}, want: ca.ErrConfig},
		{name: "negative backdate", cfg: ca.Config{TrustDomain: td, Material: m, Backdate: -time.Second}, want: ca.ErrConfig},
		{name: "bad key algorithm", cfg: ca.Config{TrustDomain: td, Material: m, KeyAlgorithm: "ed448"}, want: ca.ErrKeyAlgorithm},
		{name: "key mismatch", cfg: ca.Config{TrustDomain: td, Material: &mismatched}, want: ca.ErrKeyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ca.New(tt.cfg); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseKeyAlgorithm(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want ca.KeyAlgorithm
		err  bool
	}{
		{name: "default", in: "", want: ca.ECDSAP256},
		{name: "p384", in: "ecdsa-p384", want: ca.ECDSAP384},
		{name: "rsa3072", in: "rsa-3072", want: ca.RSA3072},
		{name: "unknown", in: "rsa-1024", err: true},
		{name: "case", in: "ECDSA-P256", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.ParseKeyAlgorithm(tt.in)
			if tt.err {
				if !errors.Is(err, ca.ErrKeyAlgorithm) || !strings.Contains(err.Error(), "ecdsa-p256") {
					t.Fatalf("err = %v, want ErrKeyAlgorithm listing the valid names", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestLintErrorIs(t *testing.T) {
	var err error = &ca.LintError{Lints: []string{"e_a", "w_b"}}
	if !errors.Is(err, ca.ErrLint) || !strings.Contains(err.Error(), "e_a, w_b") {
		t.Fatalf("LintError: %v", err)
	}
	var le *ca.LintError
	if !errors.As(err, &le) || len(le.Lints) != 2 {
		t.Fatal("errors.As failed")
	}
}

func BenchmarkIssue(b *testing.B) {
	c, _ := newCA(b, ca.ECDSAP256, clock.Real{})
	id := spiffeid.RequireFromPath(td, "/bench")
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if _, err := c.Issue(ctx, ca.Request{ID: id, TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}
