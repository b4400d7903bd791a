package authority

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/meshca/meshca/internal/store"
)

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
func (a *Authority) IssuingCAs() []*x509.Certificate {
	var out []*x509.Certificate
	err := a.cfg.Store.View(context.Background(), func(tx *store.Tx) error {
		out = nil
		serials, err := issuingSerials(tx)
		if err != nil {
			return err
		}
		for s := range serials {
			c, err := a.caCert(tx, s)
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		a.log.Error("cannot read the issuing CAs; refusing peer certificates", "err", err)
		return nil
	}
	return out
}

// IssuingSerials are the serials of the CAs whose leaves meshca accepts
// from its peers (see issuingSerials), in the CA set the CA in use was
// built from: it follows the change feed (Run) and reads nothing, so a
// change of the CA set reaches it as late as the feed does. IssuingCAs
// reads the store.
func (a *Authority) IssuingSerials() []string {
	set := a.loaded.Load()
	if set == nil {
		return nil
	}
	out := []string{set.IssuerSerial}
	if rot := set.Rotation; rot != nil && rot.PreviousIssuer != "" && rot.PreviousIssuer != set.IssuerSerial {
		out = append(out, rot.PreviousIssuer)
	}
	return out
}

// LoadedIssuingCAs are the certificates of the CAs IssuingSerials names:
// IssuingCAs as the change feed last brought them, read from the store
// only the first time a CA is seen. It lags a change of the CA set by as
// long as the feed does, so a caller that verifies a chain against it must
// also check the leaf's issuer against the store (registry.AuthenticateNode
// does), and try IssuingCAs when the chain does not verify.
func (a *Authority) LoadedIssuingCAs() []*x509.Certificate {
	serials := a.IssuingSerials()
	out := make([]*x509.Certificate, 0, len(serials))
	for _, s := range serials {
		if c, ok := a.caCerts.Load(s); ok {
			out = append(out, c.(*x509.Certificate))
			continue
		}
		err := a.cfg.Store.View(context.Background(), func(tx *store.Tx) error {
			c, err := a.caCert(tx, s)
			if err == nil {
				out = append(out, c)
			}
			return err
		})
		if err != nil {
			a.log.Error("cannot read an issuing CA; refusing peer certificates it issued until it can", "ca", s, "err", err)
		}
	}
	return out
}

// caCert parses a stored CA certificate once; CA records never change.
func (a *Authority) caCert(tx *store.Tx, serial string) (*x509.Certificate, error) {
	if c, ok := a.caCerts.Load(serial); ok {
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
	a.caCerts.Store(serial, c)
	return c, nil
}

// ServerIssuer is the CA that signs meshca's own server certificate: what
// a node pins (by its SHA-256) before it sends its join token.
func (a *Authority) ServerIssuer() *x509.Certificate { return a.serverCA().Issuer() }

// IssuersPEM are the CAs a node may find as the issuer of meshca's server
// certificate until its next renewal: the issuer in use and, during a
// rotation, the previous and the next one. It is what `meshca bootstrap
// --ca-file` and renewals pin.
func (a *Authority) IssuersPEM(ctx context.Context) []byte {
	var out []byte
	err := a.cfg.Store.View(ctx, func(tx *store.Tx) error {
		out = nil
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
			c, err := a.caCert(tx, s)
			if err != nil {
				return err
			}
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return nil
	})
	if err != nil || !bytes.Contains(out, []byte("CERTIFICATE")) {
		a.log.Error("cannot read the issuing CAs for a node", "err", err)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.ServerIssuer().Raw})
	}
	return out
}

// Trust reads, in one View, what every node verifies its peers with: the
// bundle of roots of the CA set and the CRL in use (nil when nothing is
// revoked), both PEM. It reads the store, not this process's memory, so
// that whoever signed or rotated, every reader sees the same.
func (a *Authority) Trust(ctx context.Context) (bundle, crl []byte, err error) {
	err = a.cfg.Store.View(ctx, func(tx *store.Tx) error {
		bundle, crl = nil, nil
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		for _, s := range set.RootSerials {
			c, err := a.caCert(tx, s)
			if err != nil {
				return err
			}
			bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		rec, err := tx.CRL()
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		crl = rec.PEM
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("authority: read trust bundle and CRL: %w", err)
	}
	return bundle, crl, nil
}
