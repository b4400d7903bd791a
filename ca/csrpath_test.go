package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/signer"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/clock"
)

// cfsslSign signs sr, which carries a PEM CSR, through cfssl's own CSR
// path: the one meshca's signer must agree with.
func cfsslSign(s *issuerSigner, sr signer.SignRequest) (*x509.Certificate, error) {
	p, err := s.cfssl.Sign(sr)
	if err != nil {
		return nil, err
	}
	return parsePEMCert(p)
}

// TestCSRPathAgreesWithCFSSL checks that a CSR asking for everything meshca
// ignores (another subject, DNS, IP, e-mail and URI SANs, CA basic
// constraints, an unknown extension) gets, for its checked key, exactly the
// to-be-signed certificate cfssl's local signer makes of the whole CSR
// under meshca's policy; and that the CSR path of Issue makes a certificate
// for the CSR's key alone.
func TestCSRPathAgreesWithCFSSL(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, leaf := range []KeyAlgorithm{ECDSAP256, RSA2048} {
		t.Run(string(leaf), func(t *testing.T) {
			m, err := Generate(GenerateOptions{TrustDomain: td, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			c, err := New(Config{TrustDomain: td, Material: m, Clock: clock.NewFake(now)})
			if err != nil {
				t.Fatal(err)
			}
			key, err := generateKey(leaf)
			if err != nil {
				t.Fatal(err)
			}
			der := asksForEverything(t, key)
			pub, err := checkCSR(der)
			if err != nil {
				t.Fatal(err)
			}
			serial, err := newSerial()
			if err != nil {
				t.Fatal(err)
			}
			profile := profileECDSA
			if isRSA(pub) {
				profile = profileRSA
			}
			sr := signer.SignRequest{
				Hosts:     []string{"spiffe://mesh.local/web", "web.mesh.local"},
				Subject:   &signer.Subject{CN: "web", Names: []csr.Name{{O: "mesh.local"}}},
				Profile:   profile,
				Serial:    serial,
				NotBefore: now.Add(-time.Minute),
				NotAfter:  now.Add(time.Hour),
			}
			direct, err := c.real.sign(sr, pub)
			if err != nil {
				t.Fatalf("meshca: %v", err)
			}
			sr.Request = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
			viaCFSSL, err := cfsslSign(c.real, sr)
			if err != nil {
				t.Fatalf("cfssl: %v", err)
			}
			if !bytes.Equal(direct.RawTBSCertificate, viaCFSSL.RawTBSCertificate) {
				t.Fatalf("to-be-signed certificates differ:\nmeshca %x\ncfssl  %x", direct.RawTBSCertificate, viaCFSSL.RawTBSCertificate)
			}
			if _, err := c.real.sign(sr, pub); err == nil {
				t.Fatal("sign took a request carrying a CSR; it must take only the CSR's checked key")
			}

			id := spiffeid.RequireFromPath(td, "/web")
			is, err := c.Issue(t.Context(), Request{ID: id, TTL: time.Hour, CSR: der})
			if err != nil {
				t.Fatal(err)
			}
			if !publicKeysEqual(is.Cert.PublicKey, key.Public()) || is.Key != nil || is.KeyPKCS8 != nil {
				t.Fatal("the certificate is not for the CSR's key alone")
			}
			if is.Cert.IsCA || len(is.Cert.DNSNames)+len(is.Cert.IPAddresses)+len(is.Cert.EmailAddresses) != 0 ||
				len(is.Cert.URIs) != 1 || is.Cert.URIs[0].String() != id.String() || is.Cert.Subject.CommonName != "web" {
				t.Fatalf("the certificate took something from the CSR: subject %q, URIs %v, DNS %v, IPs %v, e-mail %v, CA %v",
					is.Cert.Subject, is.Cert.URIs, is.Cert.DNSNames, is.Cert.IPAddresses, is.Cert.EmailAddresses, is.Cert.IsCA)
			}
		})
	}
}

func asksForEverything(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	bc, err := asn1.Marshal(struct {
		IsCA       bool `asn1:"optional"`
		MaxPathLen int  `asn1:"optional,default:-1"`
	}{IsCA: true, MaxPathLen: 5})
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := url.Parse("spiffe://mesh.local/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin", Organization: []string{"other"}},
		DNSNames:       []string{"other.example.com"},
		IPAddresses:    []net.IP{net.ParseIP("10.0.0.1")},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{admin},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc},
			{Id: asn1.ObjectIdentifier{1, 2, 3, 4, 5}, Value: []byte{0x05, 0x00}},
		},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
