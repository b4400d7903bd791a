package registry

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/meshca/meshca/internal/store"
)

// ErrNodeRevoked is returned by AuthenticateNode for a certificate meshca
// did issue to a node that has since been revoked: the caller may let the
// connection be made so that every call can be refused saying so.
var ErrNodeRevoked = errors.New("node was revoked")

// SubscribeNodeCerts registers fn to learn that a node's earlier node
// certificates were revoked (its renewed certificate was used, or it joined
// again): connections made with them must end. fn runs synchronously after
// the change is committed, possibly inside a handshake, so it must be quick
// and must not wait for other handshakes.
func (r *Registry) SubscribeNodeCerts(fn func(node string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodeCertSubs = append(r.nodeCertSubs, fn)
}

func (r *Registry) notifyNodeCerts(node string) {
	r.mu.Lock()
	fns := slices.Clone(r.nodeCertSubs)
	r.mu.Unlock()
	for _, fn := range fns {
		fn(node)
	}
}

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

// IssuingCAs returns the certificates of the CAs whose leaves meshca
// accepts from nodes and admins: they are the trust anchors of those
// handshakes, so that a certificate from another CA under the same root
// does not verify. It reads the store, the one truth across rotations.
func (r *Registry) IssuingCAs() []*x509.Certificate {
	var out []*x509.Certificate
	err := r.cfg.Store.View(context.Background(), func(tx *store.Tx) error {
		serials, err := issuingSerials(tx)
		if err != nil {
			return err
		}
		for s := range serials {
			c, err := r.caCert(tx, s)
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		r.log.Error("cannot read the issuing CAs; refusing peer certificates", "err", err)
		return nil
	}
	return out
}

// caCert parses a stored CA certificate once; CA records never change.
func (r *Registry) caCert(tx *store.Tx, serial string) (*x509.Certificate, error) {
	if c, ok := r.caCerts.Load(serial); ok {
		return c.(*x509.Certificate), nil
	}
	rec, err := tx.CA(serial)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", serial, err)
	}
	c, err := x509.ParseCertificate(rec.DER)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", serial, err)
	}
	r.caCerts.Store(serial, c)
	return c, nil
}

// ServerIssuer is the CA that signs meshca's own server certificate: what
// a node pins (by its SHA-256) before it sends its join token.
func (r *Registry) ServerIssuer() *x509.Certificate { return r.serverCA().Issuer() }

// IssuersPEM are the CAs a node may find as the issuer of meshca's server
// certificate until its next renewal: the issuer in use and, during a
// rotation, the previous and the next one. It is what `meshca bootstrap
// --ca-file` and renewals pin.
func (r *Registry) IssuersPEM(ctx context.Context) []byte {
	var out []byte
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		serials := []string{set.IssuerSerial}
		if rot := set.Rotation; rot != nil {
			serials = append(serials, rot.PreviousIssuer, rot.NextIssuer)
		}
		seen := map[string]bool{}
		for _, s := range serials {
			if s == "" || seen[s] {
				continue
			}
			seen[s] = true
			c, err := r.caCert(tx, s)
			if err != nil {
				return err
			}
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return nil
	})
	if err != nil || !bytes.Contains(out, []byte("CERTIFICATE")) {
		r.log.Error("cannot read the issuing CAs for a node", "err", err)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.ServerIssuer().Raw})
	}
	return out
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
