package sds_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/sds"
)

func fuzzSeedPEM(f *testing.F) (certPEM, keyPEM []byte) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	k, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})
}

func FuzzSecrets(f *testing.F) {
	certPEM, keyPEM := fuzzSeedPEM(f)
	f.Add(certPEM, keyPEM, []byte(nil))
	f.Add(certPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"))
	f.Add([]byte("garbage"), []byte(""), []byte("garbage"))
	f.Add(append(append([]byte{}, certPEM...), keyPEM...), certPEM, keyPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"), []byte{})
	f.Fuzz(func(t *testing.T, chain, key, crl []byte) {
		s, err := sds.TLSSecret("spiffe://mesh.local/echo", chain, key)
		if err == nil && s.GetTlsCertificate() == nil {
			t.Fatal("TLSSecret succeeded without a TLS certificate")
		}
		if err != nil {
			// Naming a block type is fine; quoting key material is not.
			for rest := key; ; {
				var b *pem.Block
				if b, rest = pem.Decode(rest); b == nil {
					break
				}
				if enc := base64.StdEncoding.EncodeToString(b.Bytes); len(enc) >= 16 && strings.Contains(err.Error(), enc[:16]) {
					t.Fatalf("TLSSecret error quotes key material: %v", err)
				}
			}
		}
		if s, err := sds.ValidationSecret("spiffe://mesh.local", chain, crl); err == nil && s.GetValidationContext() == nil {
			t.Fatal("ValidationSecret succeeded without a validation context")
		}
		_, _ = sds.ValidationSecret("spiffe://mesh.local", key, nil)
	})
}
