package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// AddIdentity is a request to register an identity.
type AddIdentity struct {
	Name     string
	DNSNames []string
	TTL      time.Duration // 0 means the default TTL
	Admin    bool
}

// Status is an identity with its current certificate.
type Status struct {
	Identity Identity
	Cert     *Cert // nil when the identity holds no certificate
	// CertState is revoked, or else valid, expired or not-yet-valid at the
	// registry's clock.
	CertState string
}

// AddIdentity validates the request, issues the identity's first
// certificate, and records identity, certificate and audit records in one
// transaction. A refused request is audited as denied; a certificate that
// fails the lint gate is audited as failed and never stored.
func (r *Registry) AddIdentity(ctx context.Context, req AddIdentity, actor string) (Status, error) {
	st, err := r.addIdentity(ctx, req, actor)
	if err != nil && !errors.Is(err, ca.ErrLint) && ctx.Err() == nil {
		r.deny(ctx, store.Event{Action: ActionIdentityAdd, Actor: actor, Identity: req.Name, Detail: err.Error()})
	}
	return st, err
}

func (r *Registry) addIdentity(ctx context.Context, req AddIdentity, actor string) (Status, error) {
	id, err := identity.ID(r.cfg.TrustDomain, req.Name)
	if err != nil {
		return Status{}, err
	}
	dns, err := identity.DNSNames(req.DNSNames)
	if err != nil {
		return Status{}, err
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = r.cfg.Lifetimes.Leaf
	}
	if err := authority.CheckLeafTTL(ttl); err != nil {
		return Status{}, err
	}
	if _, err := r.Identity(ctx, req.Name); err == nil {
		return Status{}, fmt.Errorf("identity %q %w", req.Name, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return Status{}, err
	}
	issued, issuerSerial, err := r.issue(ctx, ca.Request{ID: id, DNSNames: dns, TTL: ttl})
	if err != nil {
		if errors.Is(err, ca.ErrLint) {
			r.deny(ctx, store.Event{Action: ActionCertIssue, Actor: actor, Identity: req.Name, Outcome: store.OutcomeFailed, Detail: err.Error()})
		}
		return Status{}, err
	}
	now := r.cfg.Clock.Now().UTC()
	ident := store.Identity{
		Name: req.Name, SPIFFEID: id.String(), DNSNames: dns, TTL: ttl, Admin: req.Admin,
		State: store.StateActive, CurrentSerial: issued.Serial, CreatedAt: now, UpdatedAt: now,
	}
	cert := certRecord(req.Name, issued, issuerSerial, now)
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		if err := tx.InsertIdentity(ident); err != nil {
			return err
		}
		if err := tx.PutCert(cert.Cert, cert.Key); err != nil {
			return err
		}
		if _, err := tx.Append(store.Event{Action: ActionIdentityAdd, Actor: actor, Identity: req.Name, Serial: issued.Serial,
			Detail: fmt.Sprintf("ttl=%s dns=%d admin=%t", ttl, len(dns), req.Admin)}); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{Action: ActionCertIssue, Actor: actor, Identity: req.Name, Serial: issued.Serial,
			Detail: "not_after=" + cert.NotAfter.Format(time.RFC3339)})
		return err
	})
	if errors.Is(err, store.ErrExists) {
		return Status{}, fmt.Errorf("identity %q %w", req.Name, ErrExists)
	}
	if err != nil {
		return Status{}, fmt.Errorf("record identity %q: %w", req.Name, err)
	}
	r.log.Info("identity added", "identity", req.Name, "serial", issued.Serial, "not_after", cert.NotAfter, "actor", actor)
	return r.status(ident, &cert.Cert), nil
}

// certRecord is the record of an issued certificate with the key meshca
// generated for it (nil for a CSR's).
func certRecord(name string, is *ca.Issued, issuerSerial string, now time.Time) store.Credential {
	return store.Credential{
		Cert: store.Cert{
			Serial: is.Serial, Identity: name, DER: is.DER, Chain: is.Chain,
			IssuerSerial: issuerSerial, NotBefore: is.Cert.NotBefore, NotAfter: is.Cert.NotAfter, IssuedAt: now,
		},
		Key: is.KeyPKCS8,
	}
}

// Identity returns an identity and its current certificate.
func (r *Registry) Identity(ctx context.Context, name string) (Status, error) {
	var st Status
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		id, err := tx.Identity(name)
		if err != nil {
			return err
		}
		var cert *store.Cert
		if id.CurrentSerial != "" {
			c, err := tx.Cert(id.CurrentSerial)
			if err != nil {
				return err
			}
			cert = &c
		}
		st = r.statusAt(id, cert, certRevoked(tx, id, cert))
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return Status{}, fmt.Errorf("identity %q %w", clip(name, identity.MaxNameLength), ErrNotFound)
	}
	return st, err
}

// Identities lists every identity, sorted by name.
func (r *Registry) Identities(ctx context.Context) ([]Status, error) {
	var out []Status
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		ids, err := tx.Identities()
		if err != nil {
			return err
		}
		for _, id := range ids {
			var cert *store.Cert
			if id.CurrentSerial != "" {
				c, err := tx.Cert(id.CurrentSerial)
				if err != nil {
					return err
				}
				cert = &c
			}
			out = append(out, r.statusAt(id, cert, certRevoked(tx, id, cert)))
		}
		return nil
	})
	return out, err
}

// certRevoked reports whether cert may no longer be trusted: its identity
// is revoked, or the certificate itself is on the CRL.
func certRevoked(tx *store.Tx, id store.Identity, cert *store.Cert) bool {
	if cert == nil {
		return false
	}
	if id.State == store.StateRevoked {
		return true
	}
	_, err := tx.Revocation(cert.Serial)
	return err == nil
}

// status is statusAt for a certificate known not to be on the CRL unless
// its identity is revoked.
func (r *Registry) status(id store.Identity, cert *store.Cert) Status {
	return r.statusAt(id, cert, cert != nil && id.State == store.StateRevoked)
}

func (r *Registry) statusAt(id store.Identity, cert *store.Cert, revoked bool) Status {
	st := Status{Identity: identityView(id)}
	if cert != nil {
		c := certView(*cert)
		st.Cert = &c
		now := r.cfg.Clock.Now()
		switch {
		case revoked:
			st.CertState = "revoked"
		case now.Before(cert.NotBefore):
			st.CertState = "not-yet-valid"
		case !now.Before(cert.NotAfter):
			st.CertState = "expired"
		default:
			st.CertState = "valid"
		}
	}
	return st
}

// Audit returns audit records after seq, oldest first; limit <= 0 means all.
func (r *Registry) Audit(ctx context.Context, after uint64, limit int) ([]Event, error) {
	var evs []store.Event
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		evs, err = tx.Events(after, limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	return views(evs, eventView), nil
}

// LastAuditSeq returns the sequence number of the newest audit record.
func (r *Registry) LastAuditSeq(ctx context.Context) (uint64, error) {
	var seq uint64
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		seq = tx.LastSeq()
		return nil
	})
	return seq, err
}
