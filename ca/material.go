package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Lifetimes of a generated CA when GenerateOptions leaves them zero
// (meshca passes internal/authority's), and the import rule.
const (
	defaultRootTTL         = 87600 * time.Hour
	defaultIntermediateTTL = 8760 * time.Hour
	// importMinRemaining is how long an imported CA must stay valid.
	importMinRemaining = 24 * time.Hour
	// caBackdate is how far Generate backdates its certificates for skew
	// when GenerateOptions.Backdate is zero.
	caBackdate = time.Minute
)

// Material is the CA key material in use.
type Material struct {
	// Issuer signs leaves.
	Issuer    *x509.Certificate
	IssuerKey crypto.Signer
	// Chain holds the certificates above Issuer up to, not including, the
	// root, nearest first. Usually empty.
	Chain []*x509.Certificate
	// Roots are the trust anchors (self-signed): the trust bundle.
	Roots []*x509.Certificate
	// RootKey is nil when the material was imported.
	RootKey crypto.Signer
}

// GenerateOptions configures Generate.
type GenerateOptions struct {
	TrustDomain     spiffeid.TrustDomain // required
	KeyAlgorithm    KeyAlgorithm         // default ECDSAP256
	RootTTL         time.Duration        // default 10 years (87600h)
	IntermediateTTL time.Duration        // default 1 year (8760h); must be < RootTTL
	Backdate        time.Duration        // NotBefore is this long before Now; default 1m; negative is an error
	Now             time.Time            // required: the caller's clock
}

// Generate makes a self-signed root and an intermediate signed by it, both
// keyed with opts.KeyAlgorithm. The intermediate (path length 0) is the
// issuer. Both certificates pass the lint gate.
func Generate(opts GenerateOptions) (*Material, error) {
	if opts.TrustDomain.IsZero() {
		return nil, fmt.Errorf("%w: a trust domain is required", ErrConfig)
	}
	if opts.Now.IsZero() {
		return nil, fmt.Errorf("%w: GenerateOptions.Now is required", ErrConfig)
	}
	alg, err := ParseKeyAlgorithm(string(opts.KeyAlgorithm))
	if err != nil {
		return nil, err
	}
	rootTTL, interTTL := opts.RootTTL, opts.IntermediateTTL
	if rootTTL == 0 {
		rootTTL = defaultRootTTL
	}
	if interTTL == 0 {
		interTTL = defaultIntermediateTTL
	}
	if rootTTL < 0 || interTTL < 0 {
		return nil, fmt.Errorf("%w: CA TTLs must be positive", ErrConfig)
	}
	if opts.Backdate < 0 {
		return nil, fmt.Errorf("%w: negative backdate %s", ErrConfig, opts.Backdate)
	}
	if interTTL >= rootTTL {
		return nil, fmt.Errorf("%w: intermediate TTL %s must be shorter than root TTL %s", ErrConfig, interTTL, rootTTL)
	}

	notBefore := opts.Now.Add(-opts.backdate()).Truncate(time.Second).UTC()
	td := opts.TrustDomain.Name()

	rootKey, err := generateKey(alg)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	rootSerial, err := newSerial()
	if err != nil {
		return nil, err
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          rootSerial,
		Subject:               pkix.Name{CommonName: "meshca root CA", Organization: []string{td}},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(rootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	root, err := createCert(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("create root: %w", err)
	}

	inter, interKey, err := newIntermediate(alg, td, notBefore, interTTL, root, rootKey)
	if err != nil {
		return nil, err
	}
	return &Material{
		Issuer:    inter,
		IssuerKey: interKey,
		Roots:     []*x509.Certificate{root},
		RootKey:   rootKey,
	}, nil
}

// Rotate makes the next CA for a rotation. Without newRoot it is a new
// intermediate under the current root (which must have its key); with
// newRoot, a new root and a new intermediate under it. Only the returned
// Material's Issuer, IssuerKey, Roots[0] and RootKey are new: the caller
// decides which roots the bundle holds.
func Rotate(cur *Material, opts GenerateOptions, newRoot bool) (*Material, error) {
	if newRoot {
		return Generate(opts)
	}
	if cur == nil || cur.RootKey == nil || len(cur.Roots) == 0 {
		return nil, fmt.Errorf("%w: meshca does not hold the root key (the CA was imported): import the next CA instead", ErrConfig)
	}
	if opts.Now.IsZero() {
		return nil, fmt.Errorf("%w: GenerateOptions.Now is required", ErrConfig)
	}
	if opts.Backdate < 0 {
		return nil, fmt.Errorf("%w: negative backdate %s", ErrConfig, opts.Backdate)
	}
	alg, err := ParseKeyAlgorithm(string(opts.KeyAlgorithm))
	if err != nil {
		return nil, err
	}
	interTTL := opts.IntermediateTTL
	if interTTL <= 0 {
		interTTL = defaultIntermediateTTL
	}
	notBefore := opts.Now.Add(-opts.backdate()).Truncate(time.Second).UTC()
	inter, key, err := newIntermediate(alg, opts.TrustDomain.Name(), notBefore, interTTL, cur.Roots[0], cur.RootKey)
	if err != nil {
		return nil, err
	}
	return &Material{Issuer: inter, IssuerKey: key, Roots: []*x509.Certificate{cur.Roots[0]}, RootKey: cur.RootKey}, nil
}

func (o GenerateOptions) backdate() time.Duration {
	if o.Backdate == 0 {
		return caBackdate
	}
	return o.Backdate
}

// newIntermediate makes an intermediate (path length 0) under root.
func newIntermediate(alg KeyAlgorithm, td string, notBefore time.Time, ttl time.Duration, root *x509.Certificate, rootKey crypto.Signer) (*x509.Certificate, crypto.Signer, error) {
	interKey, err := generateKey(alg)
	if err != nil {
		return nil, nil, fmt.Errorf("generate intermediate key: %w", err)
	}
	interSerial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	interNotAfter := notBefore.Add(ttl)
	if interNotAfter.After(root.NotAfter) {
		interNotAfter = root.NotAfter
	}
	interTmpl := &x509.Certificate{
		SerialNumber:          interSerial,
		Subject:               pkix.Name{CommonName: "meshca intermediate CA", Organization: []string{td}},
		NotBefore:             notBefore,
		NotAfter:              interNotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	inter, err := createCert(interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create intermediate: %w", err)
	}
	return inter, interKey, nil
}

// createCert signs, parses and lints one CA certificate.
func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	if err := lintDER(der); err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// ParseImport validates an operator's CA for import. certPEM holds the CA
// certificate first, then optionally its chain up to and including a
// self-signed root; a lone self-signed CA is both root and issuer. keyPEM is
// the CA's private key as PKCS#8, SEC1 ("EC PRIVATE KEY") or PKCS#1. The CA
// must be valid at now and for at least another 24 hours.
func ParseImport(certPEM, keyPEM []byte, now time.Time) (*Material, error) {
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, err
	}
	ca := certs[0]
	if !ca.BasicConstraintsValid || !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: %q needs basicConstraints CA:TRUE and keyUsage keyCertSign", ErrNotCA, ca.Subject.String())
	}
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(ca.PublicKey, key.Public()) {
		return nil, fmt.Errorf("%w: the key in the key file is not the key of %q (the first certificate in --cert)", ErrKeyMismatch, ca.Subject.String())
	}
	if err := checkPublicKey(ca.PublicKey, true); err != nil {
		return nil, fmt.Errorf("%w: CA key: %w", ErrImport, err)
	}
	if len(ca.SubjectKeyId) == 0 {
		return nil, fmt.Errorf("%w: %q has no subject key identifier (RFC 5280 requires one in CA certificates)", ErrImport, ca.Subject.String())
	}
	switch {
	case now.Before(ca.NotBefore):
		return nil, fmt.Errorf("%w: %q is not valid until %s", ErrImport, ca.Subject.String(), ca.NotBefore.UTC().Format(time.RFC3339))
	case !now.Add(importMinRemaining).Before(ca.NotAfter):
		return nil, fmt.Errorf("%w: %q expires at %s, less than %s from now (import a renewed CA)", ErrImport, ca.Subject.String(), ca.NotAfter.UTC().Format(time.RFC3339), importMinRemaining)
	}

	root := certs[len(certs)-1]
	if !isSelfSigned(root) {
		return nil, fmt.Errorf("%w: no self-signed root certificate found; add the root certificate to --cert after the CA certificate and its chain", ErrImport)
	}
	for _, c := range certs[:len(certs)-1] {
		if isSelfSigned(c) {
			return nil, fmt.Errorf("%w: self-signed certificate %q is not last; order --cert as CA certificate, chain, root", ErrImport, c.Subject.String())
		}
	}
	var chain []*x509.Certificate
	if len(certs) > 2 {
		chain = certs[1 : len(certs)-1]
	}
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := ca.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("%w: the CA certificate does not verify to the root: %v", ErrImport, err)
	}
	return &Material{
		Issuer:    ca,
		IssuerKey: key,
		Chain:     chain,
		Roots:     []*x509.Certificate{root},
	}, nil
}

// parseCertsPEM reads CERTIFICATE blocks; anything else is refused without
// being quoted.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: the certificate file holds a PEM block that is not a CERTIFICATE (keep the key in its own file)", ErrImport)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", ErrImport, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: the certificate file holds no PEM CERTIFICATE block", ErrImport)
	}
	return certs, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// newSerial returns a positive, non-zero random serial of at most 128 bits
// whose DER encoding fits in 16 bytes.
func newSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("read random serial: %w", err)
		}
		b[0] &= 0x7f
		if s := new(big.Int).SetBytes(b); s.Sign() > 0 {
			return s, nil
		}
	}
}
