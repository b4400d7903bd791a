package sds

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sync"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/validate"
)

// TLSSecretDER is TLSSecret for certificates and a key as meshca stores
// them: chain holds DER certificates, the leaf first; key is one PKCS#8
// DER private key matching the leaf. The secret is the one TLSSecret
// builds from their PEM, without encoding PEM only to decode it again.
//
// Every certificate is parsed, as TLSSecret parses it. issuers, when not
// nil, remembers the certificates after the leaf (every leaf of an issuer
// carries the same ones): one parsed once is not parsed again.
func TLSSecretDER(name string, chain [][]byte, key []byte, issuers *IssuerCache) (*tlsv3.Secret, error) {
	if name == "" {
		return nil, ErrNoName
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("secret %q: %w: no certificate", name, ErrBadChain)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w: certificate 1: %v", name, ErrBadChain, err)
	}
	var certs bytes.Buffer
	_ = pem.Encode(&certs, &pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
	for i, der := range chain[1:] {
		p, err := issuers.pem(der)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w: certificate %d: %v", name, ErrBadChain, i+2, err)
		}
		certs.Write(p)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(key)
	if err != nil {
		// The parser's error could quote the key: dropped.
		return nil, fmt.Errorf("secret %q: %w: not a PKCS#8 key", name, ErrBadKey)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("secret %q: %w: unsupported key type %T", name, ErrBadKey, parsed)
	}
	if !publicKeyMatches(leaf, signer) {
		return nil, fmt.Errorf("secret %q: %w", name, ErrKeyChain)
	}
	s := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(certs.Bytes()),
			PrivateKey:       inline(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})),
		}},
	}
	if err := validate.Message(s); err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return s, nil
}

// DefaultIssuerCacheSize is how many certificates an IssuerCache of size
// 0 holds: the issuers of a CA rotation (previous, current, next) and
// their chains, many times over.
const DefaultIssuerCacheSize = 64

// IssuerCache remembers, by their exact DER bytes, certificates that
// parsed, as the PEM a secret carries them in. A certificate is found only
// under the very bytes it was parsed from: another certificate with the
// same serial, or the same certificate re-encoded, is parsed on its own.
// It holds at most its size; when full, it starts again empty. Safe for
// concurrent use; a nil *IssuerCache remembers nothing.
type IssuerCache struct {
	max int
	mu  sync.Mutex
	m   map[string][]byte // DER -> PEM
}

// NewIssuerCache returns a cache of at most size certificates
// (DefaultIssuerCacheSize when size is 0 or less).
func NewIssuerCache(size int) *IssuerCache {
	if size <= 0 {
		size = DefaultIssuerCacheSize
	}
	return &IssuerCache{max: size, m: make(map[string][]byte)}
}

// Len counts the certificates held.
func (c *IssuerCache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// pem returns der as PEM if it parses as a certificate.
func (c *IssuerCache) pem(der []byte) ([]byte, error) {
	if c != nil {
		c.mu.Lock()
		p, ok := c.m[string(der)]
		c.mu.Unlock()
		if ok {
			return p, nil
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	if c != nil {
		c.mu.Lock()
		if len(c.m) >= c.max {
			clear(c.m)
		}
		c.m[string(der)] = p
		c.mu.Unlock()
	}
	return p, nil
}
