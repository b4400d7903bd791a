package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

type testCert struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var serialCounter int64 = 100

// makeCert creates a certificate for key under parent (self-signed when
// parent is nil).
func makeCert(t *testing.T, cn string, key crypto.Signer, parent *testCert, isCA bool, notBefore, notAfter time.Time) *testCert {
	t.Helper()
	serialCounter++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serialCounter),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Operator"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	parentCert, parentKey := tmpl, key
	if parent != nil {
		parentCert, parentKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{cert: c, key: key}
}

func ecKey(t *testing.T) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func certsPEM(cs ...*testCert) []byte {
	var out []byte
	for _, c := range cs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})...)
	}
	return out
}

func pkcs8PEM(t *testing.T, k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func TestParseImport(t *testing.T) {
	now := testNow
	nb, na := now.Add(-24*time.Hour), now.Add(365*24*time.Hour)
	root := makeCert(t, "Operator Root", ecKey(t), nil, true, nb, now.Add(3650*24*time.Hour))
	mid := makeCert(t, "Operator Policy CA", ecKey(t), root, true, nb, na)
	inter := makeCert(t, "Operator Mesh CA", ecKey(t), root, true, nb, na)
	deep := makeCert(t, "Operator Deep CA", ecKey(t), mid, true, nb, na)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaInter := makeCert(t, "Operator RSA CA", rsaKey, root, true, nb, na)
	leaf := makeCert(t, "not a ca", ecKey(t), root, false, nb, na)
	expired := makeCert(t, "Expired CA", ecKey(t), root, true, now.Add(-48*time.Hour), now.Add(-time.Hour))
	soon := makeCert(t, "Expiring CA", ecKey(t), root, true, nb, now.Add(12*time.Hour))
	otherRoot := makeCert(t, "Other Root", ecKey(t), nil, true, nb, na)

	ecSEC1, err := x509.MarshalECPrivateKey(inter.key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		certPEM   []byte
		keyPEM    []byte
		want      error
		wantMsg   string
		wantChain int
		wantRoot  *testCert
	}{
		{name: "intermediate + root, PKCS#8", certPEM: certsPEM(inter, root), keyPEM: pkcs8PEM(t, inter.key), wantRoot: root},
		{name: "intermediate + root, SEC1", certPEM: certsPEM(inter, root), keyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecSEC1}), wantRoot: root},
		{name: "RSA intermediate, PKCS#1", certPEM: certsPEM(rsaInter, root), keyPEM: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), wantRoot: root},
		{name: "two levels of chain", certPEM: certsPEM(deep, mid, root), keyPEM: pkcs8PEM(t, deep.key), wantChain: 1, wantRoot: root},
		{name: "self-signed root only", certPEM: certsPEM(root), keyPEM: pkcs8PEM(t, root.key), wantRoot: root},
		{name: "key mismatch", certPEM: certsPEM(inter, root), keyPEM: pkcs8PEM(t, mid.key), want: ca.ErrKeyMismatch},
		{name: "not a CA", certPEM: certsPEM(leaf, root), keyPEM: pkcs8PEM(t, leaf.key), want: ca.ErrNotCA},
		{name: "expired", certPEM: certsPEM(expired, root), keyPEM: pkcs8PEM(t, expired.key), want: ca.ErrImport, wantMsg: "expires"},
		{name: "expires within 24h", certPEM: certsPEM(soon, root), keyPEM: pkcs8PEM(t, soon.key), want: ca.ErrImport},
		{name: "missing root", certPEM: certsPEM(inter), keyPEM: pkcs8PEM(t, inter.key), want: ca.ErrImport, wantMsg: "add the root certificate to --cert"},
		{name: "missing middle of chain", certPEM: certsPEM(deep, root), keyPEM: pkcs8PEM(t, deep.key), want: ca.ErrImport},
		{name: "wrong root", certPEM: certsPEM(inter, otherRoot), keyPEM: pkcs8PEM(t, inter.key), want: ca.ErrImport},
		{name: "key in cert file", certPEM: append(certsPEM(inter, root), pkcs8PEM(t, inter.key)...), keyPEM: pkcs8PEM(t, inter.key), want: ca.ErrImport},
		{name: "no certificates", certPEM: []byte("nothing"), keyPEM: pkcs8PEM(t, inter.key), want: ca.ErrImport},
		{name: "key garbage", certPEM: certsPEM(inter, root), keyPEM: []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), want: ca.ErrImport},
		{name: "no key", certPEM: certsPEM(inter, root), keyPEM: nil, want: ca.ErrImport},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ca.ParseImport(tt.certPEM, tt.keyPEM, now)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				msg := err.Error()
				if strings.Contains(msg, "PRIVATE KEY") || leaksKey(msg, tt.keyPEM) {
					t.Fatalf("error leaks key material: %s", msg)
				}
				if !strings.Contains(msg, tt.wantMsg) {
					t.Fatalf("error %q does not say %q", msg, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseImport: %v", err)
			}
			if m.RootKey != nil || len(m.Roots) != 1 || !m.Roots[0].Equal(tt.wantRoot.cert) || len(m.Chain) != tt.wantChain {
				t.Fatalf("material: RootKey=%v roots=%d chain=%d", m.RootKey != nil, len(m.Roots), len(m.Chain))
			}
			clk := clock.NewFake(now)
			c, err := ca.New(ca.Config{TrustDomain: td, Material: m, Clock: clk})
			if err != nil {
				t.Fatal(err)
			}
			is, err := c.Issue(context.Background(), ca.Request{ID: spiffeid.RequireFromPath(td, "/imported"), TTL: time.Hour})
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			// The chain the CA hands out must suffice to reach the test root.
			if m.Issuer.Equal(root.cert) && len(is.Chain) != 0 {
				t.Errorf("chain holds the root")
			}
			pool := x509.NewCertPool()
			pool.AddCert(root.cert)
			inters := x509.NewCertPool()
			for _, d := range is.Chain {
				ic, err := x509.ParseCertificate(d)
				if err != nil {
					t.Fatal(err)
				}
				inters.AddCert(ic)
			}
			if _, err := is.Cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, CurrentTime: now,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("leaf does not verify to the test root: %v", err)
			}
		})
	}
}

// leaksKey reports whether msg quotes any 12-character run of the key's
// base64 body.
func leaksKey(msg string, keyPEM []byte) bool {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return false
	}
	enc := base64.StdEncoding.EncodeToString(b.Bytes)
	for i := 0; i+12 <= len(enc); i += 4 {
		if strings.Contains(msg, enc[i:i+12]) {
			return true
		}
	}
	return false
}
