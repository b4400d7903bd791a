package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cfconfig "github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/csr"
	cflog "github.com/cloudflare/cfssl/log"
	"github.com/cloudflare/cfssl/signer"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
)

// Leaf lifetime limits the signer enforces for any caller, and the
// backdate of a Config that leaves it zero. meshca's lifetime rules are
// decided in internal/authority, which passes its values in Config and
// Request; its tests pin these constants to them.
const (
	MinTTL          = 5 * time.Minute
	MaxTTL          = 30 * 24 * time.Hour
	DefaultBackdate = time.Minute
	// MaxIPAddresses bounds the IP SANs of one certificate.
	MaxIPAddresses = 16
)

const (
	// maxCSRSize bounds the CSR bytes meshca parses.
	maxCSRSize = 64 << 10
	// maxCNLength is the X.509 upper bound on a commonName.
	maxCNLength = 64

	profileECDSA = "leaf"
	profileRSA   = "leaf-rsa"
	// profileExpiry only satisfies cfssl, which wants one; Issue always
	// passes NotBefore and NotAfter, which win.
	profileExpiry = MaxTTL
)

// Log attribute keys.
const (
	logKeySerial   = "serial"
	logKeySPIFFEID = "spiffe_id"
	logKeyNotAfter = "not_after"
	logKeyLints    = "lints"
)

var quietCFSSL sync.Once

// Clock tells the CA the time it issues at. internal/clock's clocks
// satisfy it; tests pass a fake to assert exact validity windows.
type Clock interface {
	Now() time.Time
}

// Config configures a CA.
type Config struct {
	TrustDomain  spiffeid.TrustDomain // required
	Material     *Material            // required
	KeyAlgorithm KeyAlgorithm         // for leaf keys meshca generates; default ECDSAP256
	Backdate     time.Duration        // default DefaultBackdate; negative is an error
	Clock        Clock                // default: the wall clock
	Logger       *slog.Logger         // default discard
	// LintBeforeSigning lints a copy signed by a throwaway issuer before the
	// real key signs anything (Boulder's way): the real key then never signs
	// a certificate zlint objects to, at the price of a second signature per
	// certificate. By default the signed certificate is linted before it is
	// released: nothing unlinted is ever returned either way.
	LintBeforeSigning bool
}

// CA issues SPIFFE leaf certificates from one issuer. It is safe for
// concurrent use.
type CA struct {
	td       spiffeid.TrustDomain
	material *Material
	keyAlg   KeyAlgorithm
	backdate time.Duration
	clock    Clock
	log      *slog.Logger

	real *issuerSigner // the issuer's key
	lint *issuerSigner // a throwaway copy of the issuer; nil unless linting before signing

	chainDER  [][]byte
	bundlePEM []byte

	// realSigns counts signatures by the real issuer key (a test hook).
	realSigns atomic.Int64
}

// Request asks for one leaf certificate.
type Request struct {
	// ID is the URI SAN. It must belong to the CA's trust domain and have a
	// path.
	ID spiffeid.ID
	// DNSNames are extra DNS SANs, checked with identity.DNSNames.
	DNSNames []string
	// IPAddresses are IP SANs, for a server that clients reach by address
	// (meshca's own xDS server); at most MaxIPAddresses, none unspecified
	// or multicast.
	IPAddresses []net.IP
	// TTL must be within [MinTTL, MaxTTL]. The certificate never outlives
	// the issuer.
	TTL time.Duration
	// CSR is an optional DER PKCS#10 request. Only its public key is used
	// (its signature must verify); its subject, SANs and extensions are
	// ignored. When nil, meshca generates the key (Config.KeyAlgorithm).
	CSR []byte
}

// Issued is an issued leaf certificate.
type Issued struct {
	Cert *x509.Certificate
	DER  []byte
	// Chain holds DER certificates: the issuer first, then Material.Chain.
	// It never holds the root.
	Chain [][]byte
	// Key and KeyPKCS8 are nil when issued from a CSR.
	Key      crypto.Signer
	KeyPKCS8 []byte
	// Serial is the serial number in lowercase hex, without leading zeros
	// (big.Int.Text(16)).
	Serial string
}

// New validates cfg and builds a CA. With LintBeforeSigning it generates a
// throwaway key of the issuer's type for the lint gate.
func New(cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("%w: a trust domain is required", ErrConfig)
	}
	m := cfg.Material
	if m == nil || m.Issuer == nil || m.IssuerKey == nil || len(m.Roots) == 0 {
		return nil, fmt.Errorf("%w: CA material needs an issuer certificate, its key and at least one root", ErrConfig)
	}
	if !m.Issuer.IsCA || m.Issuer.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: issuer %q", ErrNotCA, m.Issuer.Subject.String())
	}
	if !publicKeysEqual(m.Issuer.PublicKey, m.IssuerKey.Public()) {
		return nil, fmt.Errorf("%w: issuer %q", ErrKeyMismatch, m.Issuer.Subject.String())
	}
	alg, err := ParseKeyAlgorithm(string(cfg.KeyAlgorithm))
	if err != nil {
		return nil, err
	}
	backdate := cfg.Backdate
	switch {
	case backdate < 0:
		return nil, fmt.Errorf("%w: negative backdate %s", ErrConfig, backdate)
	case backdate == 0:
		backdate = DefaultBackdate
	}
	c := &CA{
		td:       cfg.TrustDomain,
		material: m,
		keyAlg:   alg,
		backdate: backdate,
		clock:    cfg.Clock,
		log:      cfg.Logger,
	}
	if c.clock == nil {
		c.clock = clock.Real{}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if _, err := lintGateLints(); err != nil {
		return nil, err
	}
	quietCFSSL.Do(func() { cflog.Level = cflog.LevelFatal })

	policy := signingPolicy()
	algo := signer.DefaultSigAlgo(m.IssuerKey)
	if algo == x509.UnknownSignatureAlgorithm {
		return nil, fmt.Errorf("%w: issuer key type %T", ErrKeyAlgorithm, m.IssuerKey.Public())
	}
	if c.real, err = newIssuerSigner(m.IssuerKey, m.Issuer, algo, policy); err != nil {
		return nil, fmt.Errorf("cfssl signer: %w", err)
	}
	if cfg.LintBeforeSigning {
		lintKey, lintIssuer, err := throwawayIssuer(m.Issuer)
		if err != nil {
			return nil, fmt.Errorf("lint issuer: %w", err)
		}
		if c.lint, err = newIssuerSigner(lintKey, lintIssuer, signer.DefaultSigAlgo(lintKey), policy); err != nil {
			return nil, fmt.Errorf("cfssl lint signer: %w", err)
		}
	}

	if !isRoot(m.Issuer, m.Roots) {
		c.chainDER = append(c.chainDER, m.Issuer.Raw)
	}
	for _, ch := range m.Chain {
		c.chainDER = append(c.chainDER, ch.Raw)
	}
	for _, r := range m.Roots {
		c.bundlePEM = append(c.bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return c, nil
}

// signingPolicy is meshca's cfssl policy, in code: leaf usages, no CA, no
// CSR fields but the public key, serials from meshca.
func signingPolicy() *cfconfig.Signing {
	leaf := func(usages ...string) *cfconfig.SigningProfile {
		return &cfconfig.SigningProfile{
			Usage:        usages,
			Expiry:       profileExpiry,
			ExpiryString: profileExpiry.String(),
			CAConstraint: cfconfig.CAConstraint{IsCA: false},
			CSRWhitelist: &cfconfig.CSRWhitelist{
				PublicKey:          true,
				PublicKeyAlgorithm: true,
				SignatureAlgorithm: true,
			},
			CopyExtensions:              false,
			ClientProvidesSerialNumbers: true,
		}
	}
	ecdsa := leaf("digital signature", "server auth", "client auth")
	return &cfconfig.Signing{
		Profiles: map[string]*cfconfig.SigningProfile{
			profileECDSA: ecdsa,
			profileRSA:   leaf("digital signature", "key encipherment", "server auth", "client auth"),
		},
		Default: ecdsa,
	}
}

// throwawayIssuer copies issuer (same subject, SKI, constraints and
// validity) onto a fresh key of the same type, self-signed. Leaves it signs
// have the same issuer name and authority key identifier as real ones.
func throwawayIssuer(issuer *x509.Certificate) (crypto.Signer, *x509.Certificate, error) {
	key, err := throwawayKeyLike(issuer.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          issuer.SerialNumber,
		RawSubject:            issuer.RawSubject,
		Subject:               issuer.Subject,
		SubjectKeyId:          issuer.SubjectKeyId,
		NotBefore:             issuer.NotBefore,
		NotAfter:              issuer.NotAfter,
		KeyUsage:              issuer.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            issuer.MaxPathLen,
		MaxPathLenZero:        issuer.MaxPathLenZero,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return key, cert, nil
}

func isRoot(c *x509.Certificate, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if bytes.Equal(c.Raw, r.Raw) {
			return true
		}
	}
	return false
}

// Issue validates req, then signs and returns a leaf certificate. Nothing
// the caller sends reaches cfssl unchecked.
func (c *CA) Issue(ctx context.Context, req Request) (*Issued, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.checkID(req.ID); err != nil {
		return nil, err
	}
	dnsNames, err := identity.DNSNames(req.DNSNames)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if req.TTL < MinTTL || req.TTL > MaxTTL {
		return nil, fmt.Errorf("%w: %s is outside [%s, %s]", ErrTTL, req.TTL, MinTTL, MaxTTL)
	}
	ips, err := checkIPs(req.IPAddresses)
	if err != nil {
		return nil, err
	}

	var (
		key    crypto.Signer
		pkcs8  []byte
		csrDER = req.CSR
		pub    crypto.PublicKey
	)
	if csrDER != nil {
		if pub, err = checkCSR(csrDER); err != nil {
			return nil, err
		}
	} else {
		if key, err = generateKey(c.keyAlg); err != nil {
			return nil, fmt.Errorf("generate leaf key: %w", err)
		}
		if pkcs8, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
			return nil, fmt.Errorf("marshal leaf key: %w", err)
		}
		pub = key.Public()
	}

	now := c.clock.Now()
	issuer := c.material.Issuer
	if !now.Before(issuer.NotAfter) {
		return nil, fmt.Errorf("%w: %q expired at %s; rotate or import a new CA", ErrIssuerExpired, issuer.Subject.String(), issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	notBefore := now.Add(-c.backdate).Truncate(time.Second).UTC()
	notAfter := notBefore.Add(req.TTL)
	if notAfter.After(issuer.NotAfter) {
		notAfter = issuer.NotAfter.UTC()
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}

	subject := &signer.Subject{Names: []csr.Name{{O: c.td.Name()}}}
	if p := strings.TrimPrefix(req.ID.Path(), "/"); len(p) <= maxCNLength {
		subject.CN = p
	}
	profile := profileECDSA
	if isRSA(pub) {
		profile = profileRSA
	}
	sr := signer.SignRequest{
		Hosts:     append(append([]string{req.ID.String()}, dnsNames...), ips...),
		Subject:   subject,
		Profile:   profile,
		Serial:    serial,
		NotBefore: notBefore,
		NotAfter:  notAfter,
	}
	// A CSR's signature was verified by checkCSR above; only its key is
	// signed (see issuerSigner).
	cert, err := c.issueRaw(ctx, sr, pub)
	if err != nil {
		return nil, err
	}
	// Defence in depth: what cfssl made of our hosts must be exactly them.
	if len(cert.URIs) != 1 || cert.URIs[0].String() != req.ID.String() ||
		!slices.Equal(cert.DNSNames, dnsNames) && len(cert.DNSNames)+len(dnsNames) > 0 ||
		!sameIPs(cert.IPAddresses, req.IPAddresses) || len(cert.EmailAddresses) != 0 || cert.IsCA ||
		!publicKeysEqual(cert.PublicKey, pub) {
		return nil, fmt.Errorf("%w: signed certificate does not match the request (serial %x); not released", ErrInvalidRequest, serial)
	}

	is := &Issued{
		Cert:     cert,
		DER:      cert.Raw,
		Chain:    c.chainDER,
		Key:      key,
		KeyPKCS8: pkcs8,
		Serial:   serial.Text(16),
	}
	c.log.DebugContext(ctx, "issued certificate",
		slog.String(logKeySerial, is.Serial),
		slog.String(logKeySPIFFEID, req.ID.String()),
		slog.Time(logKeyNotAfter, cert.NotAfter))
	return is, nil
}

// checkIPs returns the IP SANs as the strings cfssl takes in Hosts. Each
// must be a unicast or loopback address, listed once.
func checkIPs(ips []net.IP) ([]string, error) {
	if len(ips) > MaxIPAddresses {
		return nil, fmt.Errorf("%w: %d IP addresses, the limit is %d", ErrInvalidRequest, len(ips), MaxIPAddresses)
	}
	out := make([]string, 0, len(ips))
	for i, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len || ip.IsUnspecified() || ip.IsMulticast() {
			return nil, fmt.Errorf("%w: IP address %q cannot be a SAN (use a unicast or loopback address)", ErrInvalidRequest, ip)
		}
		if slices.ContainsFunc(ips[:i], ip.Equal) {
			return nil, fmt.Errorf("%w: IP address %s listed twice", ErrInvalidRequest, ip)
		}
		out = append(out, ip.String())
	}
	return out, nil
}

// sameIPs reports whether a certificate carries exactly the requested IP
// SANs, in order.
func sameIPs(got, want []net.IP) bool {
	return slices.EqualFunc(got, want, net.IP.Equal)
}

// checkID accepts a non-zero SPIFFE ID with a path in the CA's trust domain.
func (c *CA) checkID(id spiffeid.ID) error {
	if id.IsZero() {
		return fmt.Errorf("%w: a SPIFFE ID is required", ErrInvalidRequest)
	}
	s := id.String()
	if len(s) > identity.MaxIDLength {
		return fmt.Errorf("%w: %w: SPIFFE ID longer than %d bytes", ErrInvalidRequest, identity.ErrInvalidName, identity.MaxIDLength)
	}
	// Parse the string form again so that only what go-spiffe accepts
	// becomes a SAN.
	parsed, err := spiffeid.FromString(s)
	if err != nil || parsed != id {
		return fmt.Errorf("%w: %w: %v", ErrInvalidRequest, identity.ErrInvalidName, err)
	}
	if !id.MemberOf(c.td) {
		return fmt.Errorf("%w: %w: %s is not in %s", ErrInvalidRequest, identity.ErrForeignTrustDomain, id.TrustDomain(), c.td)
	}
	if id.Path() == "" {
		return fmt.Errorf("%w: %w: %s has no path (leaf certificates name a workload)", ErrInvalidRequest, identity.ErrInvalidName, s)
	}
	return nil
}

// checkCSR parses a DER PKCS#10 request, verifies its signature and returns
// its public key, the only part of it meshca uses.
func checkCSR(der []byte) (crypto.PublicKey, error) {
	if len(der) > maxCSRSize {
		return nil, fmt.Errorf("%w: CSR of %d bytes (the limit is %d)", ErrInvalidRequest, len(der), maxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: CSR is not DER PKCS#10: %v", ErrInvalidRequest, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: CSR signature does not verify: %v", ErrInvalidRequest, err)
	}
	if err := checkPublicKey(csr.PublicKey, false); err != nil {
		return nil, fmt.Errorf("%w: CSR key: %w", ErrInvalidRequest, err)
	}
	return csr.PublicKey, nil
}

// issueRaw signs sr and returns the certificate only if it passes the lint
// gate. By default the real key signs and the signed certificate is linted;
// with a throwaway issuer (LintBeforeSigning) a copy is signed and linted
// first, the real key signs only what passed, and the two to-be-signed
// certificates must be byte-identical. pub is the leaf's key, generated
// by meshca or taken from a CSR whose signature checkCSR verified.
func (c *CA) issueRaw(ctx context.Context, sr signer.SignRequest, pub crypto.PublicKey) (*x509.Certificate, error) {
	var lintedTBS []byte
	if c.lint != nil {
		// The throwaway copy is only linted: zlint's parse of it is the
		// only one.
		der, err := c.lint.signDER(sr, pub)
		if err != nil {
			return nil, fmt.Errorf("sign for lint: %w", err)
		}
		if lintedTBS, err = c.lintGate(ctx, der, sr.Serial); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}

	c.realSigns.Add(1)
	cert, err := c.real.sign(sr, pub)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if lintedTBS == nil {
		if _, err := c.lintGate(ctx, cert.Raw, sr.Serial); err != nil {
			return nil, err
		}
	} else if !bytes.Equal(cert.RawTBSCertificate, lintedTBS) {
		return nil, fmt.Errorf("%w: signed certificate differs from the linted one (serial %x); not released", ErrLint, sr.Serial)
	}
	return cert, nil
}

// lintGate lints der, logs what a refused certificate failed, and returns
// the to-be-signed part of a certificate that passed.
func (c *CA) lintGate(ctx context.Context, der []byte, serial *big.Int) ([]byte, error) {
	tbs, err := lintTBS(der)
	var le *LintError
	if errors.As(err, &le) {
		c.log.WarnContext(ctx, "certificate refused by lint gate",
			slog.String(logKeySerial, hex.EncodeToString(serial.Bytes())),
			slog.Any(logKeyLints, le.Lints))
	}
	return tbs, err
}

func parsePEMCert(p []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(p)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// Issuer returns the certificate that signs leaves.
func (c *CA) Issuer() *x509.Certificate { return c.material.Issuer }

// Roots returns the trust anchors.
func (c *CA) Roots() []*x509.Certificate { return slices.Clone(c.material.Roots) }

// BundlePEM returns the roots as PEM CERTIFICATE blocks: the trust bundle.
func (c *CA) BundlePEM() []byte { return bytes.Clone(c.bundlePEM) }

// ChainPEM returns the leaf then its chain (issuer first, no root) as PEM.
func (c *CA) ChainPEM(is *Issued) []byte {
	var b bytes.Buffer
	writePEM(&b, is.DER)
	for _, d := range is.Chain {
		writePEM(&b, d)
	}
	return b.Bytes()
}

func writePEM(w io.Writer, der []byte) {
	_ = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: der})
}
