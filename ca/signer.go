package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"

	cfconfig "github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"
)

// issuerSigner signs leaves for one issuer on cfssl's policy.
//
// meshca takes nothing from a CSR but its public key (the policy's CSR
// whitelist), so signer builds the template the way cfssl's local signer
// does for such a CSR, with cfssl's own OverrideHosts,
// PopulateSubjectFromCSR and FillTemplate, and signs it as cfssl's signer
// does. A caller's CSR is parsed and its signature verified once, by
// checkCSR, before its key gets here: handing the CSR to cfssl's Sign
// would parse it and verify its signature a second time, and a key meshca
// has just generated would need a CSR made only for cfssl to verify it
// (about a third of the issuance cost) while proving nothing.
// TestSignPathsAgree and TestCSRPathAgreesWithCFSSL pin that cfssl's CSR
// path makes byte-identical to-be-signed certificates, whatever else the
// CSR holds.
type issuerSigner struct {
	cfssl  *local.Signer
	policy *cfconfig.Signing
	cert   *x509.Certificate
	key    crypto.Signer
}

func newIssuerSigner(key crypto.Signer, cert *x509.Certificate, algo x509.SignatureAlgorithm, policy *cfconfig.Signing) (*issuerSigner, error) {
	s, err := local.NewSigner(key, cert, algo, policy)
	if err != nil {
		return nil, err
	}
	return &issuerSigner{cfssl: s, policy: policy, cert: cert, key: key}, nil
}

// sign signs sr for pub. sr must not carry a CSR: checkCSR has taken
// what meshca uses of it.
func (s *issuerSigner) sign(sr signer.SignRequest, pub crypto.PublicKey) (*x509.Certificate, error) {
	der, err := s.signDER(sr, pub)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// signDER is sign without parsing the result, for a copy that is only
// linted.
func (s *issuerSigner) signDER(sr signer.SignRequest, pub crypto.PublicKey) ([]byte, error) {
	if sr.Request != "" {
		return nil, fmt.Errorf("%w: sign takes the CSR's checked public key, not the CSR", ErrConfig)
	}
	tmpl, err := s.template(sr, pub)
	if err != nil {
		return nil, err
	}
	return x509.CreateCertificate(rand.Reader, tmpl, s.cert, pub, s.key)
}

// template is what cfssl's local signer makes of sr for a CSR holding pub
// and nothing else, under meshca's policy (a CSR whitelist of the public
// key and its algorithms, hosts and subject from the request, serials from
// meshca, no extensions, no CT).
func (s *issuerSigner) template(sr signer.SignRequest, pub crypto.PublicKey) (*x509.Certificate, error) {
	profile, err := signer.Profile(s.cfssl, sr.Profile)
	if err != nil {
		return nil, err
	}
	if len(sr.Extensions) > 0 || sr.CRLOverride != "" || sr.ReturnPrecert || len(profile.CTLogServers) > 0 || profile.NameWhitelist != nil || !profile.ClientProvidesSerialNumbers || sr.Serial == nil {
		return nil, fmt.Errorf("%w: request or profile needs cfssl's CSR path", ErrConfig)
	}
	alg, err := publicKeyAlgorithm(pub)
	if err != nil {
		return nil, err
	}
	t := x509.Certificate{PublicKeyAlgorithm: alg, PublicKey: pub, SignatureAlgorithm: s.cfssl.SigAlgo()}
	local.OverrideHosts(&t, sr.Hosts)
	t.Subject = local.PopulateSubjectFromCSR(sr.Subject, t.Subject)
	t.SerialNumber = sr.Serial
	if err := signer.FillTemplate(&t, s.policy.Default, profile, sr.NotBefore, sr.NotAfter); err != nil {
		return nil, err
	}
	return &t, nil
}

func publicKeyAlgorithm(pub crypto.PublicKey) (x509.PublicKeyAlgorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSA, nil
	case *rsa.PublicKey:
		return x509.RSA, nil
	case ed25519.PublicKey:
		return x509.Ed25519, nil
	}
	return 0, fmt.Errorf("%w: key type %T", ErrKeyAlgorithm, pub)
}
