package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

func FuzzIssueCSR(f *testing.F) {
	clk := clock.NewFake(testNow)
	c, _ := newCA(f, ca.ECDSAP256, clk)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	evil, _ := url.Parse("spiffe://mesh.local/other")
	bc, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	for _, tmpl := range []*x509.CertificateRequest{
		{},
		{Subject: pkix.Name{CommonName: "x"}, DNSNames: []string{"evil.example"}, URIs: []*url.URL{evil}, EmailAddresses: []string{"a@b"}},
		{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}}},
	} {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
		bad := append([]byte{}, der...)
		bad[len(bad)-1] ^= 1
		f.Add(bad)
		f.Add(der[:len(der)/2])
	}
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----"))
	want := "spiffe://mesh.local/echo"
	id := spiffeid.RequireFromString(want)
	f.Fuzz(func(t *testing.T, csr []byte) {
		if csr == nil {
			csr = []byte{} // nil means "generate a key": not what is fuzzed
		}
		is, err := c.Issue(context.Background(), ca.Request{ID: id, DNSNames: []string{"echo.internal"}, TTL: time.Hour, CSR: csr})
		if err != nil {
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatalf("error mentions a private key: %v", err)
			}
			return
		}
		cert := is.Cert
		if cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign != 0 {
			t.Fatal("issued a CA certificate from a fuzzed CSR")
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != want || len(cert.DNSNames) != 1 || cert.DNSNames[0] != "echo.internal" ||
			len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
			t.Fatalf("SANs uri=%v dns=%v ip=%v email=%v", cert.URIs, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
		}
		if is.KeyPKCS8 != nil {
			t.Fatal("a CSR issuance returned a private key")
		}
		if !cert.NotAfter.After(clk.Now()) || cert.NotAfter.Sub(cert.NotBefore) > time.Hour+ca.DefaultBackdate {
			t.Fatalf("validity %s..%s", cert.NotBefore, cert.NotAfter)
		}
	})
}

func FuzzParseImport(f *testing.F) {
	clk := clock.NewFake(testNow)
	_, m := newCA(f, ca.ECDSAP256, clk)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.Issuer.Raw})
	for _, r := range m.Roots {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	k, _ := x509.MarshalPKCS8PrivateKey(m.IssuerKey)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ok, _ := x509.MarshalPKCS8PrivateKey(other)
	otherPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ok})
	f.Add(certPEM, keyPEM)
	f.Add(certPEM, otherPEM)
	f.Add(keyPEM, certPEM)
	f.Add([]byte("garbage"), []byte("garbage"))
	f.Add(certPEM[:len(certPEM)/2], keyPEM[:len(keyPEM)/2])
	f.Add(certPEM, []byte("-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, cert, key []byte) {
		got, err := ca.ParseImport(cert, key, testNow)
		if err != nil {
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatalf("error mentions PRIVATE KEY: %v", err)
			}
			return
		}
		if got.Issuer == nil || got.IssuerKey == nil || len(got.Roots) == 0 || !got.Issuer.IsCA {
			t.Fatalf("accepted material is incomplete: %+v", got)
		}
	})
}
