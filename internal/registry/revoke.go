package registry

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// Audit actions for revocation.
const (
	ActionIdentityRevoke = "identity.revoke"
	ActionNodeRevoke     = "node.revoke"
	ActionCRLIssue       = "crl.issue"
)

// CRL timing. An expired CRL fails every handshake that checks it, so it is
// valid for a day and rebuilt after a quarter of that.
const (
	CRLValidity = 24 * time.Hour
	crlRefresh  = CRLValidity / 4
)

// crlState is the CRL in use; pem is nil when nothing unexpired is revoked.
type crlState struct {
	pem        []byte
	number     uint64 // the CRL number; grows with every CRL built
	issuers    []string
	thisUpdate time.Time
	nextUpdate time.Time
	entries    int
}

// CRL returns the current CRL as PEM, or nil when no unexpired certificate
// is revoked.
func (r *Registry) CRL() []byte {
	if s := r.crl.Load(); s != nil {
		return s.pem
	}
	return nil
}

// Revoked is the result of a revocation.
type Revoked struct {
	Serials []string // certificates added to the CRL
	Nodes   []string // nodes whose configuration changed
}

// RevokeIdentity stops issuance for an identity, withdraws its secret from
// every node and puts its unexpired certificates on the CRL, which every
// node receives in the trust bundle secret. All in one transaction with its
// audit records; the CRL is signed after the commit and the pushes follow.
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
		st, err := r.Identity(ctx, name)
		if err != nil || st.Identity.State != store.StateActive {
			continue
		}
		id, err := identity.ID(r.cfg.TrustDomain, name)
		if err == nil {
			var issued *ca.Issued
			if issued, err = r.issue(ctx, ca.Request{ID: id, DNSNames: st.Identity.DNSNames, TTL: st.Identity.TTL}); err == nil {
				out[name] = certRecord(name, issued, serialHex(r.CA().Issuer()), r.cfg.Clock.Now().UTC())
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
	// and every node's bundle are updated from the store's change feed;
	// the CRL, signed after the commit from the committed revocations, is
	// announced.
	var number uint64
	if built := r.crlAfterCommit(ctx); built != nil {
		number = built.number
	}
	r.log.Info(what, key, name, "certificates", len(res.Serials), "rekeyed_identities", len(rekeyed), "crl_number", number, "actor", actor)
	return res, nil
}

// crlAfterCommit publishes the CRL after a committed change to the
// revocations. The change stands whatever happens here: a CRL that cannot
// be built or signed is logged, and RunCRL builds it again on its next
// round (crlStale). It goes on when the caller's ctx ends, since the change
// it publishes is committed.
func (r *Registry) crlAfterCommit(ctx context.Context) *crlState {
	r.crlMu.Lock()
	defer r.crlMu.Unlock()
	st, err := r.publishCRL(context.WithoutCancel(ctx))
	if err != nil {
		r.crlStale.Store(true)
		r.log.Error("revocation committed but its CRL was not published; the CRL refresh retries it", "err", err)
		return nil
	}
	return st
}

// publishCRL builds the CRL from the committed revocations, records its
// issue in the audit log and makes it the CRL served, in that order: no
// CRL goes out without its audit record, and none lacks a revocation
// committed before it was read. Runs under crlMu, which keeps an older CRL
// from replacing a newer one; storeCRL checks the number as well.
func (r *Registry) publishCRL(ctx context.Context) (*crlState, error) {
	now := r.cfg.Clock.Now().UTC()
	cur := r.crl.Load()
	st, err := r.buildCRL(ctx, now)
	if err != nil {
		return nil, err
	}
	ev := store.Event{Action: ActionCRLIssue, Actor: "meshca", Serial: strings.Join(st.issuers, ","),
		Detail: fmt.Sprintf("crl_number=%d entries=%d issuers=%d next_update=%s", st.number, st.entries, len(st.issuers), st.nextUpdate.Format(time.RFC3339))}
	if st.pem == nil {
		ev.Serial, ev.Detail = serialHex(r.CA().Issuer()), "withdrawn: every revoked certificate has expired"
	}
	if st.pem != nil || (cur != nil && cur.pem != nil) {
		if _, err := r.cfg.Store.Append(ctx, ev); err != nil {
			return nil, fmt.Errorf("record CRL issue: %w", err)
		}
	}
	if !r.storeCRL(st) {
		return nil, fmt.Errorf("CRL %d not published: a newer one is in use", st.number)
	}
	r.crlStale.Store(false)
	r.announceTrust()
	return st, nil
}

// storeCRL makes st the CRL served unless the one in use has a higher
// number.
func (r *Registry) storeCRL(st *crlState) bool {
	for {
		cur := r.crl.Load()
		if cur != nil && cur.number > st.number {
			return false
		}
		if r.crl.CompareAndSwap(cur, st) {
			return true
		}
	}
}

// buildCRL reads the committed revocations in one View and signs, outside
// any transaction, one CRL for every issuer whose leaves may be in use. Its
// number is above the audit sequence of every change it covers and above
// the CRL in use, so numbers only grow, across restarts too (the audit
// record of each CRL follows it). It returns a state without PEM when
// nothing unexpired is revoked: no CRL is then served, and none can go
// stale.
func (r *Registry) buildCRL(ctx context.Context, now time.Time) (*crlState, error) {
	var (
		seq      uint64
		byIssuer map[string][]ca.Revoked
		issuers  []string
		recs     []store.CA
	)
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		seq, byIssuer, issuers, recs = tx.LastSeq(), map[string][]ca.Revoked{}, nil, nil
		revs, err := tx.Revocations()
		if err != nil {
			return err
		}
		// One CRL per issuer with unexpired revoked certificates: during
		// a CA rotation the previous intermediate's leaves are still
		// trusted.
		for _, rv := range revs {
			if !rv.NotAfter.After(now) {
				continue
			}
			if _, ok := byIssuer[rv.IssuerSerial]; !ok {
				issuers = append(issuers, rv.IssuerSerial)
			}
			byIssuer[rv.IssuerSerial] = append(byIssuer[rv.IssuerSerial], ca.Revoked{Serial: rv.Serial, RevokedAt: rv.RevokedAt, ReasonCode: ca.ReasonCode(rv.Reason)})
		}
		if len(issuers) == 0 {
			return nil
		}
		// Envoy checks CRLs for every leaf once any CRL is configured,
		// and refuses a leaf whose issuer has none: publish one, empty
		// if need be, for every issuer whose leaves may be in use.
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		inUse := []string{set.IssuerSerial}
		if set.Rotation != nil {
			inUse = append(inUse, set.Rotation.PreviousIssuer, set.Rotation.NextIssuer)
		}
		for _, is := range inUse {
			if _, ok := byIssuer[is]; !ok && is != "" {
				byIssuer[is] = nil
				issuers = append(issuers, is)
			}
		}
		sort.Strings(issuers)
		for _, is := range issuers {
			rec, err := tx.CA(is)
			if err != nil {
				return fmt.Errorf("CRL issuer %s: %w", is, err)
			}
			recs = append(recs, rec)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read revocations: %w", err)
	}
	number := seq
	if cur := r.crl.Load(); cur != nil && cur.number > number {
		number = cur.number
	}
	number++
	st := &crlState{number: number, thisUpdate: now}
	if len(issuers) == 0 {
		return st, nil
	}
	st.nextUpdate, st.issuers = now.Add(CRLValidity), issuers
	for i, is := range issuers {
		cert, key, err := parseCA(recs[i])
		if err != nil {
			return nil, err
		}
		if key == nil {
			r.log.Error("cannot sign a CRL for an issuer whose key meshca does not hold", "issuer", is)
			continue
		}
		pem, err := r.signCRL(cert, key, byIssuer[is], new(big.Int).SetUint64(number), now, now.Add(CRLValidity))
		if err != nil {
			return nil, err
		}
		st.pem = append(st.pem, pem...)
		st.entries += len(byIssuer[is])
	}
	return st, nil
}

// RefreshCRL rebuilds the CRL when it is due, a quarter of its validity
// after it was signed, or when a revocation's CRL could not be published,
// and withdraws it once every entry has expired; each change is pushed to
// every node. On start (no CRL yet) it builds the CRL from the stored
// revocations.
func (r *Registry) RefreshCRL(ctx context.Context) error {
	r.crlMu.Lock()
	defer r.crlMu.Unlock()
	return r.refreshCRL(ctx, false)
}

// rebuildCRL builds the CRL again whatever its age, for a change of the
// issuers in use.
func (r *Registry) rebuildCRL(ctx context.Context) error {
	r.crlMu.Lock()
	defer r.crlMu.Unlock()
	return r.refreshCRL(ctx, true)
}

// refreshCRL runs under crlMu.
func (r *Registry) refreshCRL(ctx context.Context, force bool) error {
	cur := r.crl.Load()
	if force || r.crlStale.Load() {
		cur = nil
	}
	now := r.cfg.Clock.Now().UTC()
	live := 0
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		live = 0
		revs, err := tx.Revocations()
		for _, rv := range revs {
			if rv.NotAfter.After(now) {
				live++
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("refresh CRL: %w", err)
	}
	switch {
	case live == 0 && (cur == nil || cur.pem == nil):
		empty := &crlState{thisUpdate: now}
		if in := r.crl.Load(); in != nil {
			empty.number = in.number
		}
		r.storeCRL(empty)
		r.crlStale.Store(false)
		return nil
	case live > 0 && cur != nil && cur.pem != nil && now.Before(cur.thisUpdate.Add(crlRefresh)):
		return nil
	}
	built, err := r.publishCRL(ctx)
	if err != nil {
		return fmt.Errorf("refresh CRL: %w", err)
	}
	if built.pem != nil && cur != nil && cur.pem != nil && now.Sub(cur.thisUpdate) > CRLValidity*3/4 {
		r.log.Error("the CRL was refreshed late: it was close to its nextUpdate", "age", now.Sub(cur.thisUpdate))
	}
	r.log.Info("CRL refreshed", "crl_number", built.number, "entries", built.entries, "next_update", built.nextUpdate)
	return nil
}

// RunCRL keeps the CRL fresh until ctx is done.
func (r *Registry) RunCRL(ctx context.Context) error {
	for {
		if err := r.RefreshCRL(ctx); err != nil {
			r.log.Error("CRL refresh failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.cfg.Clock.After(time.Minute):
		}
	}
}

// CRLAge is how old the published CRL is; ok is false when none is.
func (r *Registry) CRLAge() (time.Duration, bool) {
	s := r.crl.Load()
	if s == nil || s.pem == nil {
		return 0, false
	}
	return r.cfg.Clock.Now().Sub(s.thisUpdate), true
}
