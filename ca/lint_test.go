package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/signer"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/clock"
)

// TestLintGate drives deliberately bad templates through issueRaw, the gate
// Issue uses, in both modes: nothing bad is ever returned, and when linting
// before signing the real key never signs it either. A CSR reaches
// issueRaw as its checked public key, as a key meshca generated does: one
// path for both.
func TestLintGate(t *testing.T) {
	for _, before := range []bool{false, true} {
		t.Run(fmt.Sprintf("before signing=%v", before), func(t *testing.T) { testLintGate(t, before) })
	}
}

func testLintGate(t *testing.T, before bool) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name     string
		alg      KeyAlgorithm
		cn       string
		hosts    []string
		wantLint string // "" means the certificate must pass
	}{
		{name: "good ecdsa", alg: ECDSAP256, cn: "web", hosts: []string{"spiffe://mesh.local/web"}},
		{name: "good rsa issuer", alg: RSA2048, cn: "web", hosts: []string{"spiffe://mesh.local/web"}},
		{name: "CN of 100 characters", alg: ECDSAP256, cn: strings.Repeat("c", 100), hosts: []string{"spiffe://mesh.local/web"}, wantLint: "e_subject_common_name_max_length"},
		{name: "CN of 100 characters, RSA issuer", alg: RSA2048, cn: strings.Repeat("c", 100), hosts: []string{"spiffe://mesh.local/web"}, wantLint: "e_subject_common_name_max_length"},
		{name: "bad DNS label", alg: ECDSAP256, cn: "web", hosts: []string{"spiffe://mesh.local/web", "-bad-.example"}, wantLint: "e_rfc_dnsname_hyphen_in_sld"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Generate(GenerateOptions{TrustDomain: td, KeyAlgorithm: tt.alg, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			c, err := New(Config{TrustDomain: td, Material: m, Clock: clock.NewFake(now), LintBeforeSigning: before})
			if err != nil {
				t.Fatal(err)
			}
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			serial, err := newSerial()
			if err != nil {
				t.Fatal(err)
			}
			sr := signer.SignRequest{
				Hosts:     tt.hosts,
				Subject:   &signer.Subject{CN: tt.cn, Names: []csr.Name{{O: "mesh.local"}}},
				Profile:   profileECDSA,
				Serial:    serial,
				NotBefore: now.Add(-time.Minute),
				NotAfter:  now.Add(time.Hour),
			}
			cert, err := c.issueRaw(context.Background(), sr, key.Public())
			// The real key signs once, except for a bad certificate linted
			// before signing: then never.
			wantSigns := int64(1)
			if before && tt.wantLint != "" {
				wantSigns = 0
			}
			if got := c.realSigns.Load(); got != wantSigns {
				t.Errorf("real signatures = %d, want %d", got, wantSigns)
			}
			if tt.wantLint == "" {
				if err != nil {
					t.Fatalf("issueRaw: %v", err)
				}
				if cert.SerialNumber.Cmp(serial) != 0 || cert.CheckSignatureFrom(m.Issuer) != nil {
					t.Fatal("certificate not signed by the real issuer with the requested serial")
				}
				return
			}
			if cert != nil {
				t.Fatal("bad certificate released")
			}
			var le *LintError
			if !errors.Is(err, ErrLint) || !errors.As(err, &le) {
				t.Fatalf("err = %v, want a LintError", err)
			}
			if !slices.Contains(le.Lints, tt.wantLint) || !strings.Contains(err.Error(), tt.wantLint) {
				t.Fatalf("lints %v (%v), want %s", le.Lints, err, tt.wantLint)
			}
		})
	}
}

// TestThrowawayIssuerMatches checks that the lint issuer reproduces what a
// leaf sees of the real issuer: its name, key identifier and key type.
func TestThrowawayIssuerMatches(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	for _, alg := range keyAlgorithms {
		t.Run(string(alg), func(t *testing.T) {
			m, err := Generate(GenerateOptions{TrustDomain: td, KeyAlgorithm: alg, Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			key, cert, err := throwawayIssuer(m.Issuer)
			if err != nil {
				t.Fatal(err)
			}
			if string(cert.RawSubject) != string(m.Issuer.RawSubject) || string(cert.SubjectKeyId) != string(m.Issuer.SubjectKeyId) {
				t.Error("subject or SKI differ")
			}
			if signer.DefaultSigAlgo(key) != signer.DefaultSigAlgo(m.IssuerKey) {
				t.Error("signature algorithm differs")
			}
			if publicKeysEqual(key.Public(), m.IssuerKey.Public()) {
				t.Error("throwaway key is the real key")
			}
		})
	}
}

// TestSignPathsAgree checks that a key meshca generated, signed without a
// CSR, gets exactly the to-be-signed certificate cfssl's local signer makes
// from a CSR holding that key, for each issuer and leaf key type.
func TestSignPathsAgree(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name      string
		issuer    KeyAlgorithm
		leaf      KeyAlgorithm
		hosts     []string
		cn        string
		profileID string
	}{
		{name: "ecdsa issuer, ecdsa leaf", issuer: ECDSAP256, leaf: ECDSAP256, hosts: []string{"spiffe://mesh.local/web"}, cn: "web", profileID: profileECDSA},
		{name: "ecdsa issuer, p384 leaf, dns", issuer: ECDSAP256, leaf: ECDSAP384, hosts: []string{"spiffe://mesh.local/a/b", "web.example", "*.web.example"}, cn: "a/b", profileID: profileECDSA},
		{name: "rsa issuer, ecdsa leaf", issuer: RSA2048, leaf: ECDSAP256, hosts: []string{"spiffe://mesh.local/web"}, cn: "web", profileID: profileECDSA},
		{name: "ecdsa issuer, rsa leaf", issuer: ECDSAP384, leaf: RSA2048, hosts: []string{"spiffe://mesh.local/web"}, profileID: profileRSA},
		{name: "rsa issuer, rsa leaf", issuer: RSA2048, leaf: RSA2048, hosts: []string{"spiffe://mesh.local/web"}, cn: "web", profileID: profileRSA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Generate(GenerateOptions{TrustDomain: td, KeyAlgorithm: tt.issuer, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			c, err := New(Config{TrustDomain: td, Material: m, Clock: clock.NewFake(now)})
			if err != nil {
				t.Fatal(err)
			}
			key, err := generateKey(tt.leaf)
			if err != nil {
				t.Fatal(err)
			}
			csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			if err != nil {
				t.Fatal(err)
			}
			serial, err := newSerial()
			if err != nil {
				t.Fatal(err)
			}
			sr := signer.SignRequest{
				Hosts:     tt.hosts,
				Subject:   &signer.Subject{CN: tt.cn, Names: []csr.Name{{O: "mesh.local"}}},
				Profile:   tt.profileID,
				Serial:    serial,
				NotBefore: now.Add(-time.Minute),
				NotAfter:  now.Add(time.Hour),
			}
			direct, err := c.real.sign(sr, key.Public())
			if err != nil {
				t.Fatalf("direct: %v", err)
			}
			sr.Request = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
			viaCSR, err := cfsslSign(c.real, sr)
			if err != nil {
				t.Fatalf("through cfssl: %v", err)
			}
			if !bytes.Equal(direct.RawTBSCertificate, viaCSR.RawTBSCertificate) {
				t.Fatalf("to-be-signed certificates differ:\ndirect %x\ncfssl  %x", direct.RawTBSCertificate, viaCSR.RawTBSCertificate)
			}
			if err := direct.CheckSignatureFrom(m.Issuer); err != nil {
				t.Fatal(err)
			}
		})
	}
}
