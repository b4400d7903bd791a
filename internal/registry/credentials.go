package registry

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// More audit actions.
const (
	ActionAdminAuth = "admin.auth"
)

// ErrDenied is returned when a caller has no right to what it asked for.
var ErrDenied = errors.New("permission denied")

// IssueFromCSR issues a certificate for an existing, active identity to the
// public key of a PKCS#10 request. Only the key is taken from the request:
// SANs and validity come from the identity. The certificate is recorded and
// audited but does not replace the identity's current (SDS) certificate. It
// is how an operator gets admin credentials whose key never leaves their
// machine.
func (r *Registry) IssueFromCSR(ctx context.Context, name string, csrDER []byte, actor string) (Cert, error) {
	c, err := r.issueFromCSR(ctx, name, csrDER, actor)
	if err != nil && !errors.Is(err, ca.ErrLint) && ctx.Err() == nil {
		r.deny(ctx, store.Event{Action: ActionCertIssue, Actor: actor, Identity: name, Detail: err.Error()})
	}
	return c, err
}

func (r *Registry) issueFromCSR(ctx context.Context, name string, csrDER []byte, actor string) (Cert, error) {
	st, err := r.Identity(ctx, name)
	if err != nil {
		return Cert{}, err
	}
	if st.Identity.State != store.StateActive {
		return Cert{}, fmt.Errorf("identity %q is %s: %w", name, st.Identity.State, ErrDenied)
	}
	id, err := identity.ID(r.cfg.TrustDomain, name)
	if err != nil {
		return Cert{}, err
	}
	issued, issuerSerial, err := r.issue(ctx, ca.Request{ID: id, DNSNames: st.Identity.DNSNames, TTL: st.Identity.TTL, CSR: csrDER})
	if err != nil {
		if errors.Is(err, ca.ErrLint) {
			r.deny(ctx, store.Event{Action: ActionCertIssue, Actor: actor, Identity: name, Outcome: store.OutcomeFailed, Detail: err.Error()})
		}
		return Cert{}, err
	}
	cert := certRecord(name, issued, issuerSerial, r.cfg.Clock.Now().UTC())
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		if err := tx.PutCert(cert.Cert, cert.Key); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{Action: ActionCertIssue, Actor: actor, Identity: name, Serial: cert.Serial,
			Detail: "from CSR; not_after=" + cert.NotAfter.Format(time.RFC3339)})
		return err
	})
	if err != nil {
		return Cert{}, fmt.Errorf("record certificate for %q: %w", name, err)
	}
	r.log.Info("certificate issued from CSR", "identity", name, "serial", cert.Serial, "not_after", cert.NotAfter, "actor", actor)
	return certView(cert.Cert), nil
}

// AuthorizeAdmin decides whether a client certificate that verified against
// meshca's issuing CAs may call the admin API: its SPIFFE ID must name an
// active identity marked admin, it must be, byte for byte, a certificate
// meshca issued to that identity and recorded, and meshca must never have
// held its key (it was issued from a CSR: meshca cert issue). It returns the
// caller's SPIFFE ID for audit records. A refusal is audited.
func (r *Registry) AuthorizeAdmin(ctx context.Context, leaf *x509.Certificate) (string, error) {
	who, err := r.authorizeAdmin(ctx, leaf)
	if err != nil {
		r.deny(ctx, store.Event{Action: ActionAdminAuth, Actor: who, Serial: serialHex(leaf), Detail: err.Error()})
		return who, err
	}
	return who, nil
}

func (r *Registry) authorizeAdmin(ctx context.Context, leaf *x509.Certificate) (string, error) {
	if len(leaf.URIs) != 1 {
		return "", fmt.Errorf("client certificate has %d URI SANs, want one SPIFFE ID: %w", len(leaf.URIs), ErrDenied)
	}
	who := leaf.URIs[0].String()
	id, err := identity.ParseID(r.cfg.TrustDomain, who)
	if err != nil {
		return clip(who, identity.MaxNameLength), fmt.Errorf("%v: %w", err, ErrDenied)
	}
	name := id.Path()[1:]
	serial := serialHex(leaf)
	err = r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		ident, err := tx.Identity(name)
		if err != nil {
			return fmt.Errorf("identity %q: %v: %w", name, err, ErrDenied)
		}
		if !ident.Admin || ident.State != store.StateActive {
			return fmt.Errorf("identity %q has no admin access: %w", name, ErrDenied)
		}
		c, err := tx.Cert(serial)
		if err != nil || c.Identity != name {
			return fmt.Errorf("certificate %s was not issued to %q: %w", serial, name, ErrDenied)
		}
		if err := recorded(tx, leaf, c); err != nil {
			return err
		}
		if c.Node != "" {
			return fmt.Errorf("certificate %s of %q was signed for node %q, not for an operator: %w", serial, name, c.Node, ErrDenied)
		}
		if c.KeyHeld {
			return fmt.Errorf("certificate %s of %q has a key meshca generated; admin credentials must be issued for a key made elsewhere (meshca cert issue %s): %w", serial, name, name, ErrDenied)
		}
		if _, err := tx.Revocation(serial); err == nil {
			return fmt.Errorf("certificate %s of %q is revoked: %w", serial, name, ErrDenied)
		}
		return nil
	})
	return who, err
}
