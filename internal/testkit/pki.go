package testkit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"
)

// Key returns a new P-256 key.
func Key(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// NewCSR returns a new key and the PEM of a certificate request it signed
// with an empty subject: what a node or `meshca cert issue` sends, meshca
// deciding every name.
func NewCSR(tb testing.TB) (*ecdsa.PrivateKey, string) {
	tb.Helper()
	key := Key(tb)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// CertPEM is the PEM of a DER certificate.
func CertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM is the PKCS#8 PEM of a private key. It is secret: write it to the
// test's own files, never to its log.
func KeyPEM(tb testing.TB, key crypto.PrivateKey) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// ChainDER returns the DER of every PEM block in chainPEM, in order.
func ChainDER(chainPEM string) [][]byte {
	var chain [][]byte
	for rest := []byte(chainPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return chain
		}
		chain = append(chain, b.Bytes)
	}
}

// TLSCert pairs a PEM chain (leaf first) that meshca issued with the key
// of its request; it fails when the chain is empty or its leaf is not the
// key's.
func TLSCert(chainPEM string, key crypto.Signer) (*tls.Certificate, error) {
	chain := ChainDER(chainPEM)
	if len(chain) == 0 {
		return nil, errNoCertificate
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, err
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, errKeyMismatch
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

var (
	errNoCertificate = errors.New("no certificate in the PEM")
	errKeyMismatch   = errors.New("the leaf certificate is not for the request's key")
)

// ParseCertPEM parses the first PEM block of p as a certificate.
func ParseCertPEM(tb testing.TB, p []byte) *x509.Certificate {
	tb.Helper()
	block, _ := pem.Decode(p)
	if block == nil {
		tb.Fatalf("no PEM block in %d bytes", len(p))
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// VerifyChain parses the certificates a TLS peer presented (leaf first)
// and verifies the leaf against opts.Roots with the others as
// intermediates; opts.Intermediates is replaced. It returns the parsed
// certificates and the verified chains. Use it in a VerifyPeerCertificate
// that checks a SPIFFE ID instead of a host name, as a node does.
func VerifyChain(raw [][]byte, opts x509.VerifyOptions) ([]*x509.Certificate, [][]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, nil, errNoPeerCertificate
	}
	opts.Intermediates = x509.NewCertPool()
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := certs[0].Verify(opts)
	return certs, chains, err
}

var errNoPeerCertificate = errors.New("no peer certificate")

// CA is a certificate authority that meshca did not make: an
// organisation's root or intermediate, or a stranger's.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a CA named subject, valid from an hour ago until notAfter,
// allowed to sign certificates and CRLs. With a nil parent it is a
// self-signed root; otherwise parent signs it and it may sign only leaves
// (path length zero).
func NewCA(tb testing.TB, subject pkix.Name, notAfter time.Time, parent *CA) *CA {
	tb.Helper()
	key := Key(tb)
	tmpl := &x509.Certificate{
		SerialNumber: Serial(tb), Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	signer := &CA{Cert: tmpl, Key: key}
	if parent != nil {
		tmpl.MaxPathLenZero = true
		signer = parent
	}
	return &CA{Cert: signer.Sign(tb, tmpl, key.Public()), Key: key}
}

// Sign issues tmpl for pub, as any holder of the CA's key can.
func (ca *CA) Sign(tb testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Serial is a random positive certificate serial number.
func Serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		tb.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// Pair is a TLS certificate of leaf and key with the chain above it.
func Pair(leaf *x509.Certificate, key crypto.Signer, chain ...*x509.Certificate) *tls.Certificate {
	c := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	for _, ch := range chain {
		c.Certificate = append(c.Certificate, ch.Raw)
	}
	return c
}

// ParseCRLs parses every PEM block of crlPEM as a CRL.
func ParseCRLs(tb testing.TB, crlPEM []byte) []*x509.RevocationList {
	tb.Helper()
	var crls []*x509.RevocationList
	for b, rest := pem.Decode(crlPEM); b != nil; b, rest = pem.Decode(rest) {
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			tb.Fatal(err)
		}
		crls = append(crls, crl)
	}
	return crls
}

// Revoked is the set of serials (lowercase hex, as meshca prints them)
// that the CRLs in crlPEM list.
func Revoked(tb testing.TB, crlPEM []byte) map[string]bool {
	tb.Helper()
	out := map[string]bool{}
	for _, crl := range ParseCRLs(tb, crlPEM) {
		for _, e := range crl.RevokedCertificateEntries {
			out[e.SerialNumber.Text(16)] = true
		}
	}
	return out
}
