// Package sds builds the Envoy Secret resources that meshca serves over SDS:
// one TLS certificate secret per identity (named by its SPIFFE ID) and one
// validation secret per trust domain carrying the trust bundle. It only
// builds them: node configuration (internal/nodeconfig) puts them into each
// node's snapshot, and the SDS service itself is served by package xds.
//
// Every input is parsed before it is packed, and every result passes the
// Envoy validation rules, so a Secret that Envoy would NACK is never built.
// Errors describe what is wrong and never echo PEM or key bytes.
package sds

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/validate"
)

// TLSSecret returns the certificate secret of an identity. name is the
// identity's SPIFFE ID, e.g. "spiffe://mesh.local/echo"; chainPEM holds the
// leaf first and then any intermediates; keyPEM holds one PKCS#8, SEC 1 (EC)
// or PKCS#1 (RSA) private key matching the leaf. The PEM is re-encoded from
// the parsed blocks, so stray text and headers never reach Envoy.
func TLSSecret(name string, chainPEM, keyPEM []byte) (*tlsv3.Secret, error) {
	if name == "" {
		return nil, ErrNoName
	}
	chain, err := parseCerts(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w: %v", name, ErrBadChain, err)
	}
	keyBlock, key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	if !publicKeyMatches(chain[0], key) {
		return nil, fmt.Errorf("secret %q: %w", name, ErrKeyChain)
	}
	s := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(encodeCerts(chain)),
			PrivateKey:       inline(pem.EncodeToMemory(keyBlock)),
		}},
	}
	if err := validate.Message(s); err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return s, nil
}

// ValidationSecret returns the secret carrying a trust bundle. name is the
// trust domain's ID, "spiffe://mesh.local" (see BundleName); bundlePEM holds
// one or more CA certificates. crlPEM, when not empty, holds one or more PEM
// CRLs of the issuing CAs: Envoy then rejects revoked peer certificates. Only
// leaf certificates are checked against it (only_verify_leaf_cert_crl), so
// the roots need no CRL of their own.
func ValidationSecret(name string, bundlePEM, crlPEM []byte) (*tlsv3.Secret, error) {
	if name == "" {
		return nil, ErrNoName
	}
	certs, err := parseCerts(bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w: %v", name, ErrBadBundle, err)
	}
	vc := &tlsv3.CertificateValidationContext{TrustedCa: inline(encodeCerts(certs))}
	if len(crlPEM) > 0 {
		crls, err := parseCRLs(crlPEM)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w: %v", name, ErrBadCRL, err)
		}
		vc.Crl = inline(crls)
		vc.OnlyVerifyLeafCertCrl = true
	}
	s := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc},
	}
	if err := validate.Message(s); err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return s, nil
}

// BundleName is the name of a trust domain's validation secret:
// its SPIFFE ID, e.g. "spiffe://mesh.local".
func BundleName(td spiffeid.TrustDomain) string {
	return td.IDString()
}

// parseCRLs checks one or more X509 CRL blocks and re-encodes them.
func parseCRLs(data []byte) ([]byte, error) {
	var out []byte
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "X509 CRL" {
			return nil, fmt.Errorf("block of type %q, want X509 CRL", block.Type)
		}
		if _, err := x509.ParseRevocationList(block.Bytes); err != nil {
			return nil, err
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: block.Bytes})...)
	}
	if len(out) == 0 || len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("no PEM CRL, or trailing data")
	}
	return out, nil
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// parseCerts parses one or more CERTIFICATE blocks and nothing else.
// Certificates are public, but the errors still name positions, not bytes.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("block %d is %q, want CERTIFICATE", len(certs)+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no CERTIFICATE block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("text after certificate %d is not PEM", len(certs))
	}
	return certs, nil
}

// parseKey parses exactly one private key block. Its errors are fixed
// strings: parser errors could quote parts of the key, so they are dropped.
func parseKey(data []byte) (*pem.Block, crypto.Signer, error) {
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, nil, ErrBadKey
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, nil, fmt.Errorf("%w: want exactly one PEM block", ErrBadKey)
	}
	if len(b.Headers) != 0 {
		return nil, nil, fmt.Errorf("%w: PEM headers (an encrypted key?) are not supported", ErrBadKey)
	}
	var (
		key any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, nil, fmt.Errorf("%w: block type %q, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", ErrBadKey, b.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s block is not a valid key", ErrBadKey, b.Type)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%w: unsupported key type %T", ErrBadKey, key)
	}
	return b, signer, nil
}

func publicKeyMatches(leaf *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(leaf.PublicKey)
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}
