package registry

import (
	"bytes"
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
