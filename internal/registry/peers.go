package registry

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/meshca/meshca/internal/store"
)

// ErrNodeRevoked is returned by AuthenticateNode for a certificate meshca
// did issue to a node that has since been revoked: the caller may let the
// connection be made so that every call can be refused saying so.
var ErrNodeRevoked = errors.New("node was revoked")

// issuingSerials are the CAs whose leaves meshca accepts from its peers:
// the issuer in use and, during a rotation, the previous one. An imported
// organisation root, and any other CA under it, is not among them.
func issuingSerials(tx *store.Tx) (map[string]bool, error) {
	set, err := tx.CASet()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{set.IssuerSerial: true}
	if rot := set.Rotation; rot != nil && rot.PreviousIssuer != "" {
		out[rot.PreviousIssuer] = true
	}
	return out, nil
}

// recorded checks that leaf is byte for byte the certificate meshca issued
// and recorded as rec, from one of its own issuing CAs.
func recorded(tx *store.Tx, leaf *x509.Certificate, rec store.Cert) error {
	if !bytes.Equal(rec.DER, leaf.Raw) {
		return fmt.Errorf("certificate %s is not the one meshca issued with that serial: %w", rec.Serial, ErrDenied)
	}
	issuers, err := issuingSerials(tx)
	if err != nil {
		return err
	}
	if !issuers[rec.IssuerSerial] {
		return fmt.Errorf("certificate %s was issued by CA %s, which meshca no longer issues from: %w", rec.Serial, rec.IssuerSerial, ErrDenied)
	}
	return nil
}

// issuedByIssuing checks that CA issuerSerial, which issued certificate
// serial, is one meshca issues from, in the store's CA set: a CA retired
// on another replica is refused at once, whatever this replica's change
// feed has delivered yet.
func issuedByIssuing(tx *store.Tx, serial, issuerSerial string) error {
	issuers, err := issuingSerials(tx)
	if err != nil {
		return err
	}
	if !issuers[issuerSerial] {
		return fmt.Errorf("certificate %s was issued by CA %s, which meshca no longer issues from: %w", serial, issuerSerial, ErrDenied)
	}
	return nil
}

// comparedIssuer returns the CA that issued node's certificate cert when
// cert was found byte for byte equal to its record before (see
// comparedCerts) by an authentication, which remembers the issuer too.
func (c *comparedCerts) comparedIssuer(node string, cert *x509.Certificate) (string, bool) {
	sum := sha256.Sum256(cert.Raw)
	c.mu.Lock()
	defer c.mu.Unlock()
	got, ok := c.m[serialHex(cert)]
	if !ok || got.node != node || got.sum != sum || got.issuer == "" {
		return "", false
	}
	return got.issuer, true
}

// addIssued records that cert was found equal to its record, node's,
// issued by CA issuerSerial.
func (c *comparedCerts) addIssued(node string, cert *x509.Certificate, issuerSerial string) {
	sum := sha256.Sum256(cert.Raw)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxComparedCerts {
		c.m = make(map[string]comparedCert)
	}
	c.m[serialHex(cert)] = comparedCert{node: node, sum: sum, issuer: issuerSerial}
}
