package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/store"
)

// Audit actions of CA rotation.
const (
	ActionCARotate = "ca.rotate"
)

// ErrRotating is returned when a CA rotation is already in progress.
var ErrRotating = errors.New("a CA rotation is already in progress")

// publishGrace is the least time a new root is published before issuance
// switches to it.
const publishGrace = 30 * time.Second

// autoRotateAt is the share of the intermediate's lifetime after which
// meshca starts rotating it on its own.
const autoRotateAt = 0.8

// Rotation describes the CA rotation in progress for `meshca ca show`.
type Rotation struct {
	Kind        string
	Phase       string
	StartedAt   time.Time
	PhaseSince  time.Time
	RetireAfter time.Time
	WaitingFor  string
}

// RotationStatus returns the rotation in progress, or nil.
func (r *Registry) RotationStatus() *Rotation {
	if st := r.rotation.Load(); st != nil && st.Kind != "" {
		return st
	}
	return nil
}

// StartRotation begins a rotation of the intermediate, or with root of the
// root and the intermediate. A root rotation first publishes old and new
// roots in every node's trust bundle; an intermediate rotation needs no
// bundle change (leaves carry their intermediate) and switches issuance at
// once. Either way the previous CA stays trusted for the longest leaf
// lifetime, while leaves are reissued in spread-out batches by the renewal
// loop.
func (r *Registry) StartRotation(ctx context.Context, root bool, actor string) error {
	err := r.startRotation(ctx, root, actor)
	if err != nil && ctx.Err() == nil {
		r.deny(ctx, store.Event{Action: ActionCARotate, Actor: actor, Detail: err.Error()})
	}
	return err
}

func (r *Registry) startRotation(ctx context.Context, root bool, actor string) error {
	if r.RotationStatus() != nil {
		return ErrRotating
	}
	cur, err := r.loadCA(ctx)
	if err != nil {
		return err
	}
	now := r.cfg.Clock.Now().UTC()
	next, err := ca.Rotate(cur, ca.GenerateOptions{
		TrustDomain: r.cfg.TrustDomain, KeyAlgorithm: r.cfg.KeyAlgorithm,
		RootTTL: r.cfg.RootTTL, IntermediateTTL: r.cfg.IntermediateTTL, Now: now,
	}, root)
	if err != nil {
		return fmt.Errorf("prepare the next CA: %w", err)
	}
	issuer, err := caRecord(next.Issuer, next.IssuerKey, store.RoleIntermediate, store.SourceGenerated)
	if err != nil {
		return err
	}
	recs := []store.CA{issuer}
	var newRoot string
	if root {
		rec, err := caRecord(next.Roots[0], next.RootKey, store.RoleRoot, store.SourceGenerated)
		if err != nil {
			return err
		}
		recs = append(recs, rec)
		newRoot = rec.Serial
	}
	maxTTL, err := r.maxLeafTTL(ctx)
	if err != nil {
		return err
	}
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation != nil {
			return ErrRotating
		}
		for _, rec := range recs {
			if err := tx.PutCA(rec); err != nil {
				return err
			}
		}
		rot := &store.CARotation{PreviousIssuer: set.IssuerSerial, StartedAt: now, PhaseSince: now}
		if root {
			rot.Kind, rot.Phase, rot.NextIssuer, rot.PreviousRoot = store.RotationRoot, store.PhasePublishing, issuer.Serial, set.RootSerials[0]
			set.RootSerials = append(set.RootSerials, newRoot)
		} else {
			rot.Kind, rot.Phase, rot.RetireAfter = store.RotationIntermediate, store.PhaseReissuing, now.Add(maxTTL)
			set.IssuerSerial, set.ChainSerials = issuer.Serial, nil
		}
		set.Rotation = rot
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionCARotate, Actor: actor, Serial: issuer.Serial,
			Detail: fmt.Sprintf("kind=%s phase=%s previous_issuer=%s new_root=%s", rot.Kind, rot.Phase, rot.PreviousIssuer, newRoot)})
		return err
	})
	if err != nil {
		return err
	}
	if err := r.reload(ctx); err != nil {
		return err
	}
	r.log.Info("CA rotation started", "kind", map[bool]string{true: "root", false: "intermediate"}[root], "next_issuer", issuer.Serial, "actor", actor)
	return nil
}

// maxLeafTTL is the longest lifetime of a leaf that may be out: any active
// identity's TTL or the node certificate TTL, plus the backdate.
func (r *Registry) maxLeafTTL(ctx context.Context) (time.Duration, error) {
	max := r.cfg.NodeCertTTL
	ids, err := r.Identities(ctx)
	for _, st := range ids {
		if st.Identity.TTL > max {
			max = st.Identity.TTL
		}
	}
	return max + ca.DefaultBackdate, err
}

// reload rebuilds the CA in use, the previous one during a rotation, the
// rotation status and the CRL from the store, and pushes the result to
// every node.
func (r *Registry) reload(ctx context.Context) error {
	m, err := r.loadCA(ctx)
	if err != nil {
		return err
	}
	if err := r.use(m); err != nil {
		return err
	}
	var set store.CASet
	if err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { set, err = tx.CASet(); return err }); err != nil {
		return err
	}
	r.prev.Store(nil)
	// During either rotation meshca's server certificate stays with the
	// previous issuer: nodes pin the issuer they learnt at their last join
	// or renewal (see serverCA).
	if rot := set.Rotation; rot != nil && rot.Phase == store.PhaseReissuing && rot.PreviousIssuer != set.IssuerSerial {
		prev, err := r.caFor(ctx, rot.PreviousIssuer, m)
		if err != nil {
			return err
		}
		r.prev.Store(prev)
	}
	r.setRotationStatus(set.Rotation, "")
	// The issuers in use may have changed: rebuild the CRL now, replacing
	// the old one only once the new one is built (no push goes out without
	// a CRL in between).
	if err := r.rebuildCRL(ctx); err != nil {
		return err
	}
	r.notifyTrust()
	return nil
}

// caFor builds a CA for a stored issuer, trusted by m's roots.
func (r *Registry) caFor(ctx context.Context, serial string, m *ca.Material) (*ca.CA, error) {
	var rec store.CA
	if err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { rec, err = tx.CA(serial); return err }); err != nil {
		return nil, err
	}
	cert, key, err := parseCA(rec)
	if err != nil {
		return nil, err
	}
	return ca.New(ca.Config{
		TrustDomain: r.cfg.TrustDomain, KeyAlgorithm: r.cfg.KeyAlgorithm, Clock: r.cfg.Clock, Logger: r.log,
		LintBeforeSigning: r.cfg.LintBeforeSigning,
		Material:          &ca.Material{Issuer: cert, IssuerKey: key, Roots: m.Roots, RootKey: m.RootKey},
	})
}

func (r *Registry) setRotationStatus(rot *store.CARotation, waiting string) {
	if rot == nil {
		r.rotation.Store(&Rotation{})
		return
	}
	r.rotation.Store(&Rotation{Kind: rot.Kind, Phase: rot.Phase, StartedAt: rot.StartedAt, PhaseSince: rot.PhaseSince,
		RetireAfter: rot.RetireAfter, WaitingFor: waiting})
}

func (r *Registry) notifyAll(ctx context.Context) {
	ns, err := r.Nodes(ctx)
	if err != nil {
		r.log.Error("cannot list nodes to push a CA change", "err", err)
		return
	}
	names := make([]string, 0, len(ns))
	for _, n := range ns {
		names = append(names, n.Name)
	}
	r.notify(names...)
}

// serverCA issues meshca's own server certificate. During a rotation that
// is the previous issuer until it retires: nodes verify meshca with the
// issuing CAs they were given (and, with a root rotation, their bundle
// file), which only learn the new CA when their node certificate is
// renewed.
func (r *Registry) serverCA() *ca.CA {
	if p := r.prev.Load(); p != nil {
		return p
	}
	return r.CA()
}

// Pending counts the connected nodes that have not acknowledged their
// current secrets; the xDS server provides it.
type Pending func() int

// AdvanceRotation moves a rotation on when what it waits for is done, and
// starts an intermediate rotation when the issuer is past autoRotateAt of
// its lifetime. It returns the phase after the step ("" when none).
func (r *Registry) AdvanceRotation(ctx context.Context, pending Pending) (string, error) {
	var set store.CASet
	if err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { set, err = tx.CASet(); return err }); err != nil {
		return "", err
	}
	now := r.cfg.Clock.Now().UTC()
	rot := set.Rotation
	if rot == nil {
		issuer := r.CA().Issuer()
		life := issuer.NotAfter.Sub(issuer.NotBefore)
		if now.Before(issuer.NotBefore.Add(time.Duration(float64(life) * autoRotateAt))) {
			return "", nil
		}
		// One attempt an hour: an imported CA cannot be rotated here, and
		// each failure is audited.
		if last := r.autoRotateTried.Load(); last != nil && now.Sub(*last) < time.Hour {
			return "", nil
		}
		r.autoRotateTried.Store(&now)
		r.log.Warn("issuing CA is past 80% of its lifetime: rotating it", "issuer_not_after", issuer.NotAfter)
		if err := r.StartRotation(ctx, false, "meshca"); err != nil {
			return "", fmt.Errorf("automatic intermediate rotation (import the next CA if this one was imported): %w", err)
		}
		return store.PhaseReissuing, nil
	}
	switch rot.Phase {
	case store.PhasePublishing:
		// Nodes reconnect after a restart of meshca, and a node only counts
		// as pending once it is connected: give them publishGrace after the
		// phase began and after this process started.
		wait := rot.PhaseSince.Add(publishGrace)
		if s := r.started.Add(publishGrace); s.After(wait) {
			wait = s
		}
		if now.Before(wait) {
			r.setRotationStatus(rot, "nodes to reconnect and acknowledge the trust bundle with the new root (at least until "+wait.Format(time.RFC3339)+")")
			return rot.Phase, nil
		}
		if n := pending(); n > 0 {
			r.setRotationStatus(rot, fmt.Sprintf("%d connected node(s) to acknowledge the trust bundle with the new root", n))
			return rot.Phase, nil
		}
		maxTTL, err := r.maxLeafTTL(ctx)
		if err != nil {
			return "", err
		}
		return r.rotationStep(ctx, func(set *store.CASet) string {
			set.IssuerSerial, set.ChainSerials = rot.NextIssuer, nil
			// The new root signs from now on: put it first.
			roots := []string{}
			for _, s := range set.RootSerials {
				if s != rot.PreviousRoot {
					roots = append(roots, s)
				}
			}
			set.RootSerials = append(roots, rot.PreviousRoot)
			set.Rotation.Phase, set.Rotation.PhaseSince, set.Rotation.RetireAfter = store.PhaseReissuing, now, now.Add(maxTTL)
			return "switched issuance to the new CA"
		})
	case store.PhaseReissuing:
		stale, err := r.staleLeaves(ctx, set.IssuerSerial)
		if err != nil {
			return "", err
		}
		if stale > 0 || now.Before(rot.RetireAfter) {
			r.setRotationStatus(rot, fmt.Sprintf("%d leaf certificate(s) to reissue; the previous CA retires at %s", stale, rot.RetireAfter.Format(time.RFC3339)))
			return rot.Phase, nil
		}
		return r.rotationStep(ctx, func(set *store.CASet) string {
			if rot.PreviousRoot != "" {
				roots := []string{}
				for _, s := range set.RootSerials {
					if s != rot.PreviousRoot {
						roots = append(roots, s)
					}
				}
				set.RootSerials = roots
			}
			set.Rotation = nil
			return "retired the previous CA; rotation done"
		})
	}
	return rot.Phase, fmt.Errorf("unknown rotation phase %q", rot.Phase)
}

// rotationStep applies one phase change with its audit record and reloads.
func (r *Registry) rotationStep(ctx context.Context, change func(*store.CASet) string) (string, error) {
	var phase, what string
	err := r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation == nil {
			return errors.New("no rotation in progress")
		}
		kind := set.Rotation.Kind
		what = change(&set)
		if set.Rotation != nil {
			phase = set.Rotation.Phase
		}
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionCARotate, Actor: "meshca", Serial: set.IssuerSerial,
			Detail: fmt.Sprintf("kind=%s %s", kind, what)})
		return err
	})
	if err != nil {
		return "", err
	}
	r.log.Info("CA rotation", "step", what, "phase", phase)
	return phase, r.reload(ctx)
}

// staleLeaves counts active identities whose current certificate is not
// from issuer.
func (r *Registry) staleLeaves(ctx context.Context, issuer string) (int, error) {
	ids, err := r.Identities(ctx)
	n := 0
	for _, st := range ids {
		if st.Identity.State == store.StateActive && st.Cert != nil && st.Cert.IssuerSerial != issuer {
			n++
		}
	}
	return n, err
}

// Stale reports whether a certificate was issued by another CA than the
// current issuer; the renewal loop renews such certificates at once.
func (r *Registry) Stale(issuerSerial string) bool {
	return issuerSerial != serialHex(r.CA().Issuer())
}

// RunCA advances CA rotations until ctx is done.
func (r *Registry) RunCA(ctx context.Context, pending Pending) error {
	for {
		if _, err := r.AdvanceRotation(ctx, pending); err != nil {
			r.log.Error("CA rotation step failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.cfg.Clock.After(time.Second):
		}
	}
}
