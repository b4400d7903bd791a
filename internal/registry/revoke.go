package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// Audit actions for revocation.
const (
	ActionIdentityRevoke = "identity.revoke"
	ActionNodeRevoke     = "node.revoke"
)

// Revoked is the result of a revocation.
type Revoked struct {
	Serials []string // certificates added to the CRL
	Nodes   []string // nodes whose configuration changed
}

// RevokeIdentity stops issuance for an identity, withdraws its secret from
// every node and puts its unexpired certificates on the CRL, which every
// node receives in the trust bundle secret. All in one transaction with its
// audit records; the CRL is signed from the committed revocations after the
// commit (by the authority, which follows the change feed), and the pushes
// follow.
func (r *Registry) RevokeIdentity(ctx context.Context, name, reason, actor string) (Revoked, error) {
	res, err := r.revoke(ctx, name, reason, actor, false, nil)
	if err != nil && ctx.Err() == nil {
		r.deny(ctx, store.Event{Action: ActionIdentityRevoke, Actor: actor, Identity: clip(name, identity.MaxNameLength), Detail: err.Error()})
	}
	return res, err
}

// RevokeNode refuses a node from now on (its streams are closed by the xDS
// server when it is told) and puts its node certificates on the CRL. Every
// identity the node held gets a new key and certificate, pushed to its other
// holders, and the certificates the node may have received go on the CRL:
// the revoked node's copies stop working at once, not at their expiry.
func (r *Registry) RevokeNode(ctx context.Context, name, reason, actor string) (Revoked, error) {
	// A re-key that cannot be issued must not hold up the revocation. One
	// issued for identities the node no longer holds all is issued again.
	var (
		res Revoked
		err error
	)
	for range 3 {
		rekeys := r.prepareRekeys(ctx, name, actor)
		if res, err = r.revoke(ctx, name, reason, actor, true, rekeys); !errors.Is(err, errRekeysStale) {
			break
		}
	}
	if err != nil && ctx.Err() == nil {
		r.deny(ctx, store.Event{Action: ActionNodeRevoke, Actor: actor, Node: clip(name, identity.MaxNameLength), Detail: err.Error()})
	}
	return res, err
}

// errRekeysStale: the node was assigned an identity after its re-keys were
// issued.
var errRekeysStale error = conflict("the node was assigned another identity while it was being revoked; revoke it again")

// prepareRekeys issues, before the revocation's transaction, a new
// certificate for each active identity node holds, by name; a name with
// no certificate (Serial empty) was looked at and is not re-keyed. An
// identity whose certificate cannot be issued is logged and audited as
// failed, with what to do, and keeps its key.
func (r *Registry) prepareRekeys(ctx context.Context, node, actor string) map[string]store.Credential {
	out := map[string]store.Credential{}
	n, err := r.Node(ctx, node)
	if err != nil || n.State != store.StateActive {
		return out // refused in the transaction
	}
	for _, name := range n.Identities {
		out[name] = store.Credential{}
		if n.Agent {
			continue // never held a key meshca made: its own certificates are revoked instead
		}
		st, err := r.Identity(ctx, name)
		if err != nil || st.Identity.State != store.StateActive {
			continue
		}
		id, err := identity.ID(r.cfg.TrustDomain, name)
		if err == nil {
			var (
				issued       *ca.Issued
				issuerSerial string
			)
			if issued, issuerSerial, err = r.issue(ctx, ca.Request{ID: id, DNSNames: st.Identity.DNSNames, TTL: st.Identity.TTL}); err == nil {
				out[name] = certRecord(name, issued, issuerSerial, r.cfg.Clock.Now().UTC())
				continue
			}
		}
		err = fmt.Errorf("re-key of identity %q held by revoked node %q failed (run meshca identity reissue %s, or revoke it): %w", name, node, name, err)
		r.log.Error("identity of a revoked node not re-keyed", "identity", name, "node", node, "err", err)
		r.deny(ctx, store.Event{Action: ActionCertReissue, Actor: actor, Identity: name, Node: node, Outcome: store.OutcomeFailed, Detail: err.Error()})
	}
	return out
}

// rekey makes fresh the current certificate of identity name inside tx and
// revokes every unexpired certificate of it whose key meshca served. ok is
// false when the identity is no longer active (then its certificates are on
// the CRL already).
func rekey(tx *store.Tx, name string, fresh store.Credential, node, reason, actor string, now time.Time) (revoked []string, ok bool, err error) {
	id, err := tx.Identity(name)
	if err != nil || id.State != store.StateActive {
		return nil, false, nil
	}
	certs, err := tx.CertsFor(name)
	if err != nil {
		return nil, false, err
	}
	for _, c := range certs {
		if !c.KeyHeld || !c.NotAfter.After(now) {
			continue // a CSR's key never left its owner; expired is harmless
		}
		if _, err := tx.Revocation(c.Serial); err == nil {
			continue
		}
		if err := tx.PutRevocation(store.Revocation{Serial: c.Serial, Identity: name, IssuerSerial: c.IssuerSerial,
			Reason: "held by revoked node " + node + ": " + reason, NotAfter: c.NotAfter, RevokedAt: now}); err != nil {
			return nil, false, err
		}
		revoked = append(revoked, c.Serial)
	}
	prev := id.CurrentSerial
	id.CurrentSerial, id.UpdatedAt = fresh.Serial, now
	if err := tx.PutCert(fresh.Cert, fresh.Key); err != nil {
		return nil, false, err
	}
	if err := tx.PutIdentity(id); err != nil {
		return nil, false, err
	}
	_, err = tx.Append(store.Event{Action: ActionCertReissue, Actor: actor, Identity: name, Node: node, Serial: fresh.Serial,
		Detail: fmt.Sprintf("re-keyed: node %s was revoked; replaces=%s revoked=%d not_after=%s", node, prev, len(revoked), fresh.NotAfter.Format(time.RFC3339))})
	return revoked, true, err
}

func (r *Registry) revoke(ctx context.Context, name, reason, actor string, node bool, rekeys map[string]store.Credential) (Revoked, error) {
	reason = clip(reason, 200)
	var res Revoked
	var rekeyed []string
	err := r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		res, rekeyed = Revoked{}, nil
		now := r.cfg.Clock.Now().UTC()
		subject := name
		if node {
			n, err := tx.Node(name)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("node %q %w", clip(name, identity.MaxNameLength), ErrNotFound)
			} else if err != nil {
				return err
			}
			if n.State == store.StateRevoked {
				return conflict(fmt.Sprintf("node %q is already revoked; nothing to do", name))
			}
			n.State, n.UpdatedAt = store.StateRevoked, now
			if err := tx.DeleteJoinToken(name); err != nil {
				return err
			}
			if err := tx.PutNode(n); err != nil {
				return err
			}
			subject = nodeSubject(name)
			res.Nodes = []string{name}
			if n.Agent {
				// Only this node's certificates: the other holders keep
				// theirs.
				serials, err := revokeAgentNodeCerts(tx, n, "node revoked: "+reason, now)
				if err != nil {
					return err
				}
				res.Serials = append(res.Serials, serials...)
			}
			for _, ident := range n.Identities {
				fresh, ok := rekeys[ident]
				if !ok {
					// Assigned since the re-keys were issued: the node
					// may hold its key.
					return errRekeysStale
				}
				if fresh.Serial == "" {
					continue
				}
				serials, ok, err := rekey(tx, ident, fresh, name, reason, actor, now)
				if err != nil {
					return err
				}
				if ok {
					res.Serials = append(res.Serials, serials...)
					rekeyed = append(rekeyed, ident)
				}
			}
		} else {
			id, err := tx.Identity(name)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("identity %q %w", clip(name, identity.MaxNameLength), ErrNotFound)
			} else if err != nil {
				return err
			}
			if id.State == store.StateRevoked {
				return conflict(fmt.Sprintf("identity %q is already revoked; nothing to do (its certificates are on the CRL)", name))
			}
			id.State, id.UpdatedAt = store.StateRevoked, now
			if err := tx.PutIdentity(id); err != nil {
				return err
			}
		}
		certs, err := tx.CertsFor(subject)
		if err != nil {
			return err
		}
		for _, c := range certs {
			if !c.NotAfter.After(now) {
				continue // expired: nothing to revoke
			}
			if _, err := tx.Revocation(c.Serial); err == nil {
				continue
			}
			if err := tx.PutRevocation(store.Revocation{Serial: c.Serial, Identity: subject, IssuerSerial: c.IssuerSerial,
				Reason: reason, NotAfter: c.NotAfter, RevokedAt: now}); err != nil {
				return err
			}
			res.Serials = append(res.Serials, c.Serial)
		}
		ev := store.Event{Action: ActionIdentityRevoke, Actor: actor, Identity: name,
			Detail: fmt.Sprintf("reason=%q certificates=%d", reason, len(res.Serials))}
		if node {
			ev = store.Event{Action: ActionNodeRevoke, Actor: actor, Node: name,
				Detail: fmt.Sprintf("reason=%q certificates=%d rekeyed_identities=%d", reason, len(res.Serials), len(rekeyed))}
		}
		if _, err := tx.Append(ev); err != nil {
			return err
		}
		ns, err := tx.Nodes()
		if err != nil {
			return err
		}
		for _, n := range ns { // every node's trust bundle secret carries the CRL
			if n.Name != name || !node {
				res.Nodes = append(res.Nodes, n.Name)
			}
		}
		return nil
	})
	if err != nil {
		return Revoked{}, err
	}
	what, key := "identity revoked", "identity"
	if node {
		what, key = "node revoked", "node"
	}
	// The revoked node, the holders of the revoked or re-keyed identities
	// and, through the CRL the authority signs for the committed
	// revocations, every node's bundle are updated from the store's change
	// feed.
	r.log.Info(what, key, name, "certificates", len(res.Serials), "rekeyed_identities", len(rekeyed), "actor", actor)
	return res, nil
}
