package sds_test

import (
	"bytes"
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
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/sds"
)

type material struct {
	rootPEM, interPEM, leafPEM []byte
	keyPKCS8, keyEC            []byte
	otherKeyPKCS8              []byte
	rsaLeafPEM, rsaKeyPKCS1    []byte
}

func newMaterial(t *testing.T) material {
	t.Helper()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(serial int64, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer, ca bool, uri string) (*x509.Certificate, []byte) {
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(serial),
			Subject:               pkix.Name{CommonName: "test"},
			NotBefore:             now,
			NotAfter:              now.Add(time.Hour),
			BasicConstraintsValid: true,
			IsCA:                  ca,
		}
		if ca {
			tmpl.KeyUsage = x509.KeyUsageCertSign
		} else {
			u, _ := url.Parse(uri)
			tmpl.URIs = []*url.URL{u}
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	ecKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	rootKey, interKey, leafKey, otherKey := ecKey(), ecKey(), ecKey(), ecKey()
	root, rootPEM := mk(1, rootKey.Public(), nil, rootKey, true, "")
	inter, interPEM := mk(2, interKey.Public(), root, rootKey, true, "")
	_, leafPEM := mk(3, leafKey.Public(), inter, interKey, false, "spiffe://mesh.local/echo")
	ecDER, err := x509.MarshalECPrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, rsaLeafPEM := mk(4, rsaKey.Public(), inter, interKey, false, "spiffe://mesh.local/legacy")
	return material{
		rootPEM: rootPEM, interPEM: interPEM, leafPEM: leafPEM,
		keyPKCS8:      pkcs8(leafKey),
		keyEC:         pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}),
		otherKeyPKCS8: pkcs8(otherKey),
		rsaLeafPEM:    rsaLeafPEM,
		rsaKeyPKCS1:   pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}),
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestTLSSecretRoundTrip(t *testing.T) {
	m := newMaterial(t)
	const name = "spiffe://mesh.local/echo"
	tests := []struct {
		name       string
		chain, key []byte
	}{
		{"leaf only, PKCS#8", m.leafPEM, m.keyPKCS8},
		{"leaf and intermediate, PKCS#8", cat(m.leafPEM, m.interPEM), m.keyPKCS8},
		{"SEC 1 EC key", cat(m.leafPEM, m.interPEM), m.keyEC},
		{"PKCS#1 RSA key", m.rsaLeafPEM, m.rsaKeyPKCS1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := sds.TLSSecret(name, tt.chain, tt.key)
			if err != nil {
				t.Fatalf("TLSSecret() error = %v", err)
			}
			if s.GetName() != name {
				t.Errorf("name = %q, want %q", s.GetName(), name)
			}
			tc := s.GetTlsCertificate()
			if got := tc.GetCertificateChain().GetInlineBytes(); !bytes.Equal(got, tt.chain) {
				t.Errorf("certificate_chain.inline_bytes differs from the input chain:\n%s", got)
			}
			if got := tc.GetPrivateKey().GetInlineBytes(); !bytes.Equal(got, tt.key) {
				t.Error("private_key.inline_bytes differs from the input key")
			}
			if err := s.ValidateAll(); err != nil {
				t.Errorf("ValidateAll() = %v", err)
			}
		})
	}
}

func TestTLSSecretStripsNonPEM(t *testing.T) {
	m := newMaterial(t)
	chain := cat([]byte("subject=CN = test\n"), m.leafPEM, []byte("\n\n"))
	s, err := sds.TLSSecret("spiffe://mesh.local/echo", chain, cat(m.keyPKCS8, []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(); !bytes.Equal(got, m.leafPEM) {
		t.Errorf("chain not re-encoded from the parsed blocks:\n%s", got)
	}
}

func TestValidationSecretRoundTrip(t *testing.T) {
	m := newMaterial(t)
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	if got, want := sds.BundleName(td), "spiffe://mesh.local"; got != want {
		t.Fatalf("BundleName() = %q, want %q", got, want)
	}
	bundle := cat(m.rootPEM, m.interPEM)
	s, err := sds.ValidationSecret(sds.BundleName(td), bundle, nil)
	if err != nil {
		t.Fatalf("ValidationSecret() error = %v", err)
	}
	if s.GetName() != "spiffe://mesh.local" {
		t.Errorf("name = %q", s.GetName())
	}
	if got := s.GetValidationContext().GetTrustedCa().GetInlineBytes(); !bytes.Equal(got, bundle) {
		t.Errorf("trusted_ca.inline_bytes differs from the bundle:\n%s", got)
	}
}

// keyLeaks reports whether err quotes any 16-character run of the key's
// base64 body, or the raw PEM.
func keyLeaks(err error, keyPEM []byte) bool {
	msg := err.Error()
	if b, _ := pem.Decode(keyPEM); b != nil {
		body := base64.StdEncoding.EncodeToString(b.Bytes)
		for i := 0; i+16 <= len(body); i += 4 {
			if strings.Contains(msg, body[i:i+16]) {
				return true
			}
		}
	}
	return strings.Contains(msg, strings.TrimSpace(string(keyPEM)))
}

func TestTLSSecretRejects(t *testing.T) {
	m := newMaterial(t)
	corruptKey := func(k []byte) []byte {
		b, _ := pem.Decode(k)
		der := bytes.Clone(b.Bytes)
		der[len(der)/2] ^= 0xff
		der = der[:len(der)-3]
		return pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: der})
	}
	tests := []struct {
		name        string
		id          string
		chain, key  []byte
		want        error
		wantMessage string
	}{
		{"empty name", "", m.leafPEM, m.keyPKCS8, sds.ErrNoName, "name is empty"},
		{"empty chain", "spiffe://mesh.local/echo", nil, m.keyPKCS8, sds.ErrBadChain, "no CERTIFICATE block"},
		{"chain is not PEM", "spiffe://mesh.local/echo", []byte("hello"), m.keyPKCS8, sds.ErrBadChain, "no CERTIFICATE block"},
		{"chain holds a key", "spiffe://mesh.local/echo", m.keyPKCS8, m.keyPKCS8, sds.ErrBadChain, `"PRIVATE KEY", want CERTIFICATE`},
		{"chain with trailing junk", "spiffe://mesh.local/echo", cat(m.leafPEM, []byte("junk")), m.keyPKCS8, sds.ErrBadChain, "not PEM"},
		{"chain with a corrupt certificate", "spiffe://mesh.local/echo", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), m.keyPKCS8, sds.ErrBadChain, "certificate 1"},
		{"empty key", "spiffe://mesh.local/echo", m.leafPEM, nil, sds.ErrBadKey, "private key PEM does not parse"},
		{"key is raw DER-ish text", "spiffe://mesh.local/echo", m.leafPEM, []byte("-----not a key-----"), sds.ErrBadKey, "private key PEM does not parse"},
		{"key is a certificate", "spiffe://mesh.local/echo", m.leafPEM, m.leafPEM, sds.ErrBadKey, `"CERTIFICATE"`},
		{"two keys", "spiffe://mesh.local/echo", m.leafPEM, cat(m.keyPKCS8, m.keyEC), sds.ErrBadKey, "exactly one"},
		{"corrupt PKCS#8 key", "spiffe://mesh.local/echo", m.leafPEM, corruptKey(m.keyPKCS8), sds.ErrBadKey, "not a valid key"},
		{"corrupt EC key", "spiffe://mesh.local/echo", m.leafPEM, corruptKey(m.keyEC), sds.ErrBadKey, "not a valid key"},
		{"PKCS#8 bytes labelled EC", "spiffe://mesh.local/echo", m.leafPEM, bytes.Replace(m.keyPKCS8, []byte("PRIVATE KEY"), []byte("EC PRIVATE KEY"), 2), sds.ErrBadKey, "not a valid key"},
		{"key with PEM headers", "spiffe://mesh.local/echo", m.leafPEM, func() []byte {
			b, _ := pem.Decode(m.keyEC)
			b.Headers = map[string]string{"Proc-Type": "4,ENCRYPTED"}
			return pem.EncodeToMemory(b)
		}(), sds.ErrBadKey, "headers"},
		{"key of another identity", "spiffe://mesh.local/echo", m.leafPEM, m.otherKeyPKCS8, sds.ErrKeyChain, "does not match"},
		{"key matches an intermediate, not the leaf", "spiffe://mesh.local/echo", cat(m.rsaLeafPEM, m.interPEM), m.keyPKCS8, sds.ErrKeyChain, "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := sds.TLSSecret(tt.id, tt.chain, tt.key)
			if err == nil {
				t.Fatalf("TLSSecret() = %v, want an error", s)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("error = %v, want errors.Is %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantMessage) {
				t.Errorf("error = %q, want it to contain %q", err, tt.wantMessage)
			}
			for _, k := range [][]byte{tt.key, tt.chain, m.keyPKCS8, m.keyEC, m.otherKeyPKCS8, m.rsaKeyPKCS1} {
				if bytes.Contains(k, []byte("PRIVATE KEY")) && keyLeaks(err, k) {
					t.Errorf("error quotes key bytes: %q", err)
				}
			}
		})
	}
}

func TestKeyLeakDetectorWorks(t *testing.T) {
	m := newMaterial(t)
	b, _ := pem.Decode(m.keyPKCS8)
	leaky := errors.New("bad key " + base64.StdEncoding.EncodeToString(b.Bytes)[20:60])
	if !keyLeaks(leaky, m.keyPKCS8) {
		t.Fatal("keyLeaks missed a quoted key fragment")
	}
}

func TestValidationSecretRejects(t *testing.T) {
	m := newMaterial(t)
	tests := []struct {
		name   string
		id     string
		bundle []byte
		want   error
	}{
		{"empty name", "", m.rootPEM, sds.ErrNoName},
		{"empty bundle", "spiffe://mesh.local", nil, sds.ErrBadBundle},
		{"bundle holds a key", "spiffe://mesh.local", cat(m.rootPEM, m.keyPKCS8), sds.ErrBadBundle},
		{"bundle with junk", "spiffe://mesh.local", cat(m.rootPEM, []byte("x")), sds.ErrBadBundle},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := sds.ValidationSecret(tt.id, tt.bundle, nil); !errors.Is(err, tt.want) {
				t.Fatalf("ValidationSecret() error = %v, want %v", err, tt.want)
			} else if keyLeaks(err, m.keyPKCS8) {
				t.Errorf("error quotes key bytes: %q", err)
			}
		})
	}
}

func TestValidationSecretCarriesCRL(t *testing.T) {
	m := newMaterial(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "crl issuer"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, _ := x509.CreateCertificate(rand.Reader, ca, ca, key.Public(), key)
	ca, _ = x509.ParseCertificate(der)
	crlDER, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(42), RevocationTime: time.Now()}}}, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	crlPEM := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crlDER})
	s, err := sds.ValidationSecret("spiffe://mesh.local", m.rootPEM, append(crlPEM, crlPEM...))
	if err != nil {
		t.Fatal(err)
	}
	vc := s.GetValidationContext()
	if !bytes.Equal(vc.GetCrl().GetInlineBytes(), append(crlPEM, crlPEM...)) || !vc.GetOnlyVerifyLeafCertCrl() {
		t.Fatalf("crl %q, only_verify_leaf_cert_crl %v", vc.GetCrl().GetInlineBytes(), vc.GetOnlyVerifyLeafCertCrl())
	}
	for name, bad := range map[string][]byte{
		"garbage":       []byte("not a crl"),
		"wrong type":    m.rootPEM,
		"trailing text": append(append([]byte{}, crlPEM...), "junk"...),
	} {
		if _, err := sds.ValidationSecret("spiffe://mesh.local", m.rootPEM, bad); !errors.Is(err, sds.ErrBadCRL) {
			t.Errorf("%s: err = %v, want ErrBadCRL", name, err)
		}
	}
}
