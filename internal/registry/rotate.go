package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/store"
)

// Audit actions of CA rotation.
const (
	// ActionCARotate audits each step of a rotation: start, switch, abort,
	// emergency, revocation of a compromised CA's certificates, done.
	ActionCARotate = "ca.rotate"
	// ActionCARotateReissue audits each leaf a CA rotation re-issues under
	// the new CA; routine renewals and `identity reissue` are
	// identity.reissue.
	ActionCARotateReissue = "ca.rotate.reissue"
)

// ReasonCACompromise is the revocation reason of the certificates an
// emergency rotation revokes.
const ReasonCACompromise = "ca-compromise"

// ErrRotating is returned when a CA rotation is already in progress; the
// wrapping error says what it waits for and what the operator can do.
var ErrRotating = errors.New("a CA rotation is already in progress")

const (
	// publishGrace is the least time a new root is published before
	// issuance switches to it, when some node could connect: nodes
	// reconnect after a restart of meshca, and only a connected node
	// counts as pending.
	publishGrace = 30 * time.Second
	// ackWait bounds how long a phase waits for connected nodes to
	// acknowledge what was pushed: a node that rejects its configuration
	// must not hold a rotation forever.
	ackWait = 5 * time.Minute
	// rotationTick is how often RunCA looks at the rotation.
	rotationTick = time.Second
	// maxRotationSteps bounds the steps one AdvanceRotation takes.
	maxRotationSteps = 4
)

// Rotation describes the CA rotation in progress for `meshca ca show`.
type Rotation struct {
	Kind       string
	Phase      string
	Emergency  bool
	StartedAt  time.Time
	PhaseSince time.Time
	// RetireAfter is when the previous CA retires at the latest, if every
	// leaf is re-issued by then; in phase publishing, when issuance
	// switches at the latest (zero while the phase has no bound).
	RetireAfter time.Time
	WaitingFor  string
	// Leaves is how many leaf certificates this rotation re-issues under
	// the new CA; Reissued and ReissueFailed how far that got.
	Leaves, Reissued, ReissueFailed int
	// NodesConnected and NodesAcked: connected nodes, and those of them
	// that acknowledged what was last pushed to them.
	NodesConnected, NodesAcked int
	// OldNodeCerts counts active nodes whose node certificate is still
	// from the CA that is leaving (which meshca stops accepting when it
	// retires).
	OldNodeCerts int
	// OwnWorkDone is true when meshca has nothing left to do: the rotation
	// waits only for nodes to renew their node certificates.
	OwnWorkDone bool
}

// RotationDone sums up the last rotation that ended in this process.
type RotationDone struct {
	Kind       string
	Emergency  bool
	Aborted    bool
	StartedAt  time.Time
	FinishedAt time.Time
	Reissued   int // leaves re-issued under the new CA
	Revoked    int // certificates of a compromised CA put on the CRL
}

// Acks tells how connected nodes stand: how many are connected, and how
// many of those have not acknowledged the secrets last pushed to them. The
// xDS server provides it.
type Acks func(ctx context.Context) (pending, connected int)

// rotationRun is the state of the rotation driver.
type rotationRun struct {
	mu sync.Mutex // one rotation step at a time
	// cancel stops the re-issue pass in flight, so that an emergency
	// rotation does not wait for it.
	cancel atomic.Pointer[context.CancelFunc]
	// reissuedAt is when the last re-issue pass ended (under mu): the
	// wait for acknowledgements counts from it.
	reissuedAt time.Time
	// Progress of the rotation in progress; passes counts re-issue passes
	// (failures are audited on the first, and only logged on retries).
	leaves, reissued, failed, passes atomic.Int64
	lastErr                          atomic.Pointer[string]
	wait                             atomic.Pointer[rotationWait]
	last                             atomic.Pointer[RotationDone]
	// nodeCerts is the last scan of node certificates (see nodeCerts).
	nodeCerts atomic.Pointer[nodeCertScan]
}

// rotationWait is what the rotation waits for, for its status.
type rotationWait struct {
	what             string
	until            time.Time
	connected, acked int
	oldNodeCerts     int
	ownWorkDone      bool
}

// RotationStatus returns the rotation in progress, or nil.
func (r *Registry) RotationStatus() *Rotation {
	if st := r.rotation.Load(); st != nil && st.Kind != "" {
		return st
	}
	return nil
}

// LastRotation returns what the last rotation that ended in this process
// did, or nil.
func (r *Registry) LastRotation() *RotationDone { return r.rot.last.Load() }

// StartRotation begins a rotation of the intermediate, or with root of the
// root and the intermediate. An intermediate rotation switches issuance to
// a new intermediate under the same root at once (leaves carry their
// intermediate: the bundle does not change). A root rotation first
// publishes old and new roots in every node's trust bundle and switches
// once connected nodes have acknowledged it. Then RunCA re-issues every
// leaf under the new CA at full speed, waits (a bounded time) for
// connected nodes to acknowledge, and for nodes to renew node certificates
// from the previous CA (root or intermediate rotation: meshca accepts node
// certificates only from its issuing CAs); the previous CA retires at once
// after that.
func (r *Registry) StartRotation(ctx context.Context, root bool, actor string) error {
	err := r.refuseIfRotating(ctx)
	if err == nil {
		r.rot.mu.Lock()
		err = r.startRotation(ctx, root, actor)
		r.rot.mu.Unlock()
	}
	if err != nil && ctx.Err() == nil {
		r.deny(ctx, store.Event{Action: ActionCARotate, Actor: actor, Detail: err.Error()})
	}
	return err
}

// refuseIfRotating refuses at once while a rotation is in progress,
// without waiting for a re-issue pass that holds r.rot.mu.
func (r *Registry) refuseIfRotating(ctx context.Context) error {
	set, err := r.caSet(ctx)
	if err != nil {
		return err
	}
	if set.Rotation != nil {
		return r.busy(set.Rotation)
	}
	return nil
}

// startRotation runs under r.rot.mu.
func (r *Registry) startRotation(ctx context.Context, root bool, actor string) error {
	set, err := r.caSet(ctx)
	if err != nil {
		return err
	}
	if set.Rotation != nil {
		return r.busy(set.Rotation)
	}
	next, recs, err := r.nextCA(ctx, root)
	if err != nil {
		return err
	}
	now := r.cfg.Clock.Now().UTC()
	issuer := recs[0]
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation != nil {
			return r.busy(set.Rotation)
		}
		for _, rec := range recs {
			if err := tx.PutCA(rec); err != nil {
				return err
			}
		}
		rot := &store.CARotation{PreviousIssuer: set.IssuerSerial, StartedAt: now, PhaseSince: now}
		if root {
			rot.Kind, rot.Phase, rot.NextIssuer, rot.NextRoot, rot.PreviousRoot = store.RotationRoot, store.PhasePublishing, issuer.Serial, recs[1].Serial, set.RootSerials[0]
			set.RootSerials = append(set.RootSerials, recs[1].Serial)
		} else {
			rot.Kind, rot.Phase = store.RotationIntermediate, store.PhaseReissuing
			set.IssuerSerial, set.ChainSerials = issuer.Serial, nil
		}
		set.Rotation = rot
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionCARotate, Actor: actor, Serial: issuer.Serial,
			Detail: fmt.Sprintf("kind=%s phase=%s previous_issuer=%s new_root=%s", rot.Kind, rot.Phase, rot.PreviousIssuer, rot.NextRoot)})
		return err
	})
	if err != nil {
		return err
	}
	r.resetProgress()
	r.rot.reissuedAt = time.Time{}
	if err := r.reload(ctx); err != nil {
		return err
	}
	r.log.Info("CA rotation started", "kind", kindOf(root), "next_issuer", issuer.Serial, "issuer_not_after", next.Issuer.NotAfter, "actor", actor)
	return nil
}

// nextCA makes the next CA: a new intermediate under the root that signs
// now, or with root a new root and intermediate. recs holds the issuer
// first, then the new root.
func (r *Registry) nextCA(ctx context.Context, root bool) (*ca.Material, []store.CA, error) {
	cur, err := r.loadCA(ctx)
	if err != nil {
		return nil, nil, err
	}
	next, err := ca.Rotate(cur, ca.GenerateOptions{
		TrustDomain: r.cfg.TrustDomain, KeyAlgorithm: r.cfg.KeyAlgorithm,
		RootTTL: r.cfg.Lifetimes.Root, IntermediateTTL: r.cfg.Lifetimes.Intermediate, Backdate: r.cfg.Lifetimes.Backdate, Now: r.cfg.Clock.Now().UTC(),
	}, root)
	if err != nil {
		return nil, nil, fmt.Errorf("prepare the next CA: %w", err)
	}
	issuer, err := caRecord(next.Issuer, next.IssuerKey, store.RoleIntermediate, store.SourceGenerated)
	if err != nil {
		return nil, nil, err
	}
	recs := []store.CA{issuer}
	if root {
		rec, err := caRecord(next.Roots[0], next.RootKey, store.RoleRoot, store.SourceGenerated)
		if err != nil {
			return nil, nil, err
		}
		recs = append(recs, rec)
	}
	return next, recs, nil
}

func kindOf(root bool) string {
	if root {
		return store.RotationRoot
	}
	return store.RotationIntermediate
}

// busy is the refusal of a second rotation: it says where the current one
// stands, when it ends, and what the operator can do.
func (r *Registry) busy(rot *store.CARotation) error {
	what := fmt.Sprintf("%s rotation started %s, in phase %s since %s", rot.Kind, rot.StartedAt.Format(time.RFC3339), rot.Phase, rot.PhaseSince.Format(time.RFC3339))
	if rot.Emergency {
		what = "emergency " + what
	}
	if st := r.RotationStatus(); st != nil {
		if st.WaitingFor != "" {
			what += "; waiting for " + st.WaitingFor
		}
		switch {
		case st.RetireAfter.IsZero():
		case rot.Phase == store.PhasePublishing:
			what += "; issuance switches to the new CA by " + st.RetireAfter.Format(time.RFC3339) + " at the latest"
		default:
			what += "; it ends by " + st.RetireAfter.Format(time.RFC3339) + " at the latest"
		}
	}
	var do string
	if rot.Phase == store.PhasePublishing {
		do = "follow it with 'meshca ca rotate --wait', withdraw the new root with 'meshca ca rotate --abort', " +
			"or, if a CA key may be compromised, replace every CA key now with 'meshca ca rotate --emergency --root'"
	} else {
		do = "follow it with 'meshca ca rotate --wait' (it cannot be aborted: issuance has switched to the new CA), " +
			"or, if a CA key may be compromised, replace it now with 'meshca ca rotate --emergency' (with --root for a new root too)"
	}
	return fmt.Errorf("%w (%s): %s", ErrRotating, what, do)
}

// caSet reads the CA set.
func (r *Registry) caSet(ctx context.Context) (store.CASet, error) {
	var set store.CASet
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { set, err = tx.CASet(); return err })
	return set, err
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
	set, err := r.caSet(ctx)
	if err != nil {
		return err
	}
	r.prev.Store(nil)
	// During either rotation meshca's server certificate stays with the
	// previous issuer: nodes pin the issuer they learnt at their last join
	// or renewal (see serverCA). Not after an emergency: that issuer may be
	// compromised.
	if rot := set.Rotation; rot != nil && rot.Phase == store.PhaseReissuing && rot.PreviousIssuer != set.IssuerSerial && !rot.Emergency {
		prev, err := r.caFor(ctx, rot.PreviousIssuer, m)
		if err != nil {
			return err
		}
		r.prev.Store(prev)
	}
	r.rot.wait.Store(nil)
	r.setRotationStatus(set.Rotation)
	// The issuers in use may have changed: rebuild the CRL now, replacing
	// the old one only once the new one is built (no push goes out without
	// a CRL in between).
	if err := r.rebuildCRL(ctx); err != nil {
		return err
	}
	r.announceTrust()
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
		TrustDomain: r.cfg.TrustDomain, KeyAlgorithm: r.cfg.KeyAlgorithm, Backdate: r.cfg.Lifetimes.Backdate, Clock: r.cfg.Clock, Logger: r.log,
		LintBeforeSigning: r.cfg.LintBeforeSigning,
		Material:          &ca.Material{Issuer: cert, IssuerKey: key, Roots: m.Roots, RootKey: m.RootKey},
	})
}

func (r *Registry) resetProgress() {
	r.rot.leaves.Store(0)
	r.rot.reissued.Store(0)
	r.rot.failed.Store(0)
	r.rot.passes.Store(0)
	r.rot.lastErr.Store(nil)
	r.rot.wait.Store(nil)
}

// setRotationStatus publishes the rotation's status from its record, the
// re-issue counters and what it waits for.
func (r *Registry) setRotationStatus(rot *store.CARotation) {
	if rot == nil {
		r.rotation.Store(&Rotation{})
		return
	}
	st := &Rotation{Kind: rot.Kind, Phase: rot.Phase, Emergency: rot.Emergency, StartedAt: rot.StartedAt, PhaseSince: rot.PhaseSince,
		Leaves: int(r.rot.leaves.Load()), Reissued: int(r.rot.reissued.Load()), ReissueFailed: int(r.rot.failed.Load())}
	if w := r.rot.wait.Load(); w != nil {
		st.WaitingFor, st.RetireAfter, st.OwnWorkDone = w.what, w.until, w.ownWorkDone
		st.NodesConnected, st.NodesAcked, st.OldNodeCerts = w.connected, w.acked, w.oldNodeCerts
	}
	r.rotation.Store(st)
}

// waitFor records what the rotation waits for and publishes it.
func (r *Registry) waitFor(rot *store.CARotation, w rotationWait) {
	r.rot.wait.Store(&w)
	r.setRotationStatus(rot)
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

// AdvanceRotation moves a rotation on as far as what it waits for allows,
// and starts an intermediate rotation when the issuer is past Lifetimes.AutoRotate
// of its lifetime. It returns the phase after the steps ("" when none).
func (r *Registry) AdvanceRotation(ctx context.Context, acks Acks) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.rot.mu.Lock()
	defer r.rot.mu.Unlock()
	r.rot.cancel.Store(&cancel)
	defer r.rot.cancel.Store(nil)
	return r.advanceSteps(ctx, acks)
}

// advanceSteps runs under r.rot.mu: a step may make the next possible at
// once (a switch is followed by the re-issue).
func (r *Registry) advanceSteps(ctx context.Context, acks Acks) (string, error) {
	for i := 0; ; i++ {
		phase, moved, err := r.advance(ctx, acks)
		if err != nil || !moved || phase == "" || i == maxRotationSteps {
			return phase, err
		}
	}
}

// advance takes one step; moved tells whether the phase changed.
func (r *Registry) advance(ctx context.Context, acks Acks) (phase string, moved bool, err error) {
	set, err := r.caSet(ctx)
	if err != nil {
		return "", false, err
	}
	now := r.cfg.Clock.Now().UTC()
	rot := set.Rotation
	if rot == nil {
		return r.autoRotate(ctx, now)
	}
	switch rot.Phase {
	case store.PhasePublishing:
		return r.advancePublishing(ctx, rot, acks, now)
	case store.PhaseReissuing:
		return r.advanceReissuing(ctx, set, acks, now)
	}
	return rot.Phase, false, fmt.Errorf("unknown rotation phase %q", rot.Phase)
}

func (r *Registry) autoRotate(ctx context.Context, now time.Time) (string, bool, error) {
	issuer := r.CA().Issuer()
	if now.Before(r.cfg.Lifetimes.AutoRotateAt(issuer.NotBefore, issuer.NotAfter)) {
		return "", false, nil
	}
	// One attempt an hour: an imported CA cannot be rotated here, and
	// each failure is audited.
	if last := r.autoRotateTried.Load(); last != nil && now.Sub(*last) < time.Hour {
		return "", false, nil
	}
	r.autoRotateTried.Store(&now)
	r.log.Warn(fmt.Sprintf("issuing CA is past %.0f%% of its lifetime: rotating it", 100*r.cfg.Lifetimes.AutoRotate), "issuer_not_after", issuer.NotAfter)
	if err := r.startRotation(ctx, false, "meshca"); err != nil {
		if ctx.Err() == nil {
			r.deny(ctx, store.Event{Action: ActionCARotate, Actor: "meshca", Detail: err.Error()})
		}
		return "", false, fmt.Errorf("automatic intermediate rotation (import the next CA if this one was imported): %w", err)
	}
	return store.PhaseReissuing, false, nil
}

// advancePublishing switches issuance to the new root once connected
// nodes acknowledged the bundle that holds it, at most ackWait after the
// grace for nodes that hold a node certificate to reconnect.
func (r *Registry) advancePublishing(ctx context.Context, rot *store.CARotation, acks Acks, now time.Time) (string, bool, error) {
	holders, _, err := r.nodeCerts(ctx, "", now)
	if err != nil {
		return "", false, err
	}
	pending, connected := acks(ctx)
	w := rotationWait{connected: connected, acked: connected - pending}
	if holders > 0 {
		grace := rot.PhaseSince.Add(publishGrace)
		if s := r.started.Add(publishGrace); s.After(grace) {
			grace = s
		}
		w.until = grace.Add(ackWait)
		// The grace is for nodes that hold a certificate but have not
		// reconnected: when every such node is connected, none is needed.
		if now.Before(grace) && connected < holders {
			w.what = fmt.Sprintf("nodes to reconnect and acknowledge the trust bundle with the new root (%d of %d connected node(s) did; until %s at least)", w.acked, connected, grace.Format(time.RFC3339))
			r.waitFor(rot, w)
			return rot.Phase, false, nil
		}
		if pending > 0 && now.Before(w.until) {
			w.what = fmt.Sprintf("%d of %d connected node(s) to acknowledge the trust bundle with the new root (until %s at most)", pending, connected, w.until.Format(time.RFC3339))
			r.waitFor(rot, w)
			return rot.Phase, false, nil
		}
	}
	note := "switched issuance to the new CA"
	if pending > 0 {
		note += fmt.Sprintf(" with %d connected node(s) that had not acknowledged the new bundle in %s", pending, ackWait)
		r.log.Warn("CA rotation: switching although connected nodes have not acknowledged the new bundle", "pending", pending, "waited", ackWait)
	}
	phase, err := r.rotationStep(ctx, func(set *store.CASet) (string, bool) {
		set.IssuerSerial, set.ChainSerials = rot.NextIssuer, nil
		// The new root signs from now on: put it first.
		roots := slices.DeleteFunc(slices.Clone(set.RootSerials), func(s string) bool { return s == rot.PreviousRoot })
		set.RootSerials = append(roots, rot.PreviousRoot)
		set.Rotation.Phase, set.Rotation.PhaseSince = store.PhaseReissuing, now
		return note, false
	})
	return phase, err == nil, err
}

// advanceReissuing re-issues every leaf still from another issuer, then
// waits for acknowledgements and for node certificates from the previous
// CA to be renewed or expire, and retires the previous CA.
func (r *Registry) advanceReissuing(ctx context.Context, set store.CASet, acks Acks, now time.Time) (string, bool, error) {
	rot := set.Rotation
	stale, err := r.staleLeaves(ctx, set.IssuerSerial)
	if err != nil {
		return "", false, err
	}
	if len(stale) > 0 {
		r.reissueForRotation(ctx, rot, stale)
		now = r.cfg.Clock.Now().UTC()
		r.rot.reissuedAt = now
		if stale, err = r.staleLeaves(ctx, set.IssuerSerial); err != nil {
			return "", false, err
		}
		if len(stale) > 0 {
			what := fmt.Sprintf("%d leaf certificate(s) to re-issue under the new CA (retried every %s)", len(stale), rotationTick)
			if e := r.rot.lastErr.Load(); e != nil {
				what += "; last failure: " + *e
			}
			r.waitFor(rot, rotationWait{what: what})
			return rot.Phase, false, ctx.Err()
		}
	}
	if r.rot.reissuedAt.IsZero() {
		r.rot.reissuedAt = now // nothing to re-issue, or re-issued before a restart
	}
	if rot.Emergency {
		return r.finishEmergency(ctx)
	}
	pending, connected := acks(ctx)
	w := rotationWait{connected: connected, acked: connected - pending, until: r.rot.reissuedAt.Add(ackWait)}
	if pending > 0 && now.Before(w.until) {
		w.what = fmt.Sprintf("%d of %d connected node(s) to acknowledge their certificates from the new CA (until %s at most)", pending, connected, w.until.Format(time.RFC3339))
		r.waitFor(rot, w)
		return rot.Phase, false, nil
	}
	// Nodes and admins are accepted only with certificates from the issuer
	// in use or, during a rotation, the previous one (peers.go): the
	// previous CA retires once no active node still depends on it.
	{
		n, last, err := r.nodeCerts(ctx, set.IssuerSerial, now)
		if err != nil {
			return "", false, err
		}
		if n > 0 {
			w.oldNodeCerts, w.ownWorkDone = n, true
			if last.After(w.until) {
				w.until = last
			}
			w.what = fmt.Sprintf("%d node(s) to renew their node certificate under the new CA (nodes renew it themselves, or at once with 'meshca bootstrap renew' on the node; the previous CA retires when they have, or when the last of those certificates expires)", n)
			r.waitFor(rot, w)
			return rot.Phase, false, nil
		}
	}
	note := "retired the previous CA; rotation done"
	if pending > 0 {
		note += fmt.Sprintf(" (%d connected node(s) had not acknowledged their new certificates in %s)", pending, ackWait)
		r.log.Warn("CA rotation: retiring the previous CA although connected nodes have not acknowledged their certificates", "pending", pending)
	}
	phase, err := r.rotationStep(ctx, func(set *store.CASet) (string, bool) {
		if rot.PreviousRoot != "" {
			set.RootSerials = slices.DeleteFunc(set.RootSerials, func(s string) bool { return s == rot.PreviousRoot })
		}
		set.Rotation = nil
		return note, true
	})
	return phase, err == nil, err
}

// reissueForRotation re-keys names under the new CA at full speed, each
// audited as ActionCARotateReissue.
func (r *Registry) reissueForRotation(ctx context.Context, rot *store.CARotation, names []string) {
	// A later pass retries the failures of the first: the total stays.
	base := r.rot.leaves.Load() - int64(len(names))
	if base < 0 {
		base = 0
		r.rot.leaves.Store(int64(len(names)))
	}
	r.rot.reissued.Store(base)
	r.rot.failed.Store(0)
	r.waitFor(rot, rotationWait{what: fmt.Sprintf("%d leaf certificate(s) to re-issue under the new CA", len(names))})
	note := "ca_rotation=" + rot.Kind
	if rot.Emergency {
		note += " emergency=true"
	}
	start := r.cfg.Clock.Now()
	first := r.rot.passes.Add(1) == 1
	sum := r.reissueEach(ctx, names, func(ctx context.Context, name string) error {
		_, _, err := r.reissue(ctx, name, "meshca", ActionCARotateReissue, note)
		if err != nil {
			if ctx.Err() == nil {
				msg := fmt.Sprintf("%s: %v", name, err)
				r.rot.lastErr.Store(&msg)
				r.log.Error("CA rotation: re-issue failed; will retry", "identity", name, "err", err)
				if first && !errors.Is(err, ca.ErrLint) { // a lint failure is audited where it happens
					r.deny(ctx, store.Event{Action: ActionCARotateReissue, Actor: "meshca", Identity: name, Outcome: store.OutcomeFailed, Detail: note + ": " + err.Error()})
				}
			}
			return err
		}
		return nil
	}, func(p ReissueProgress) {
		r.rot.reissued.Store(base + int64(p.Reissued))
		r.rot.failed.Store(int64(p.Failed))
		r.setRotationStatus(rot)
	})
	r.rot.reissued.Store(base + int64(sum.Reissued))
	r.rot.failed.Store(int64(sum.Failed))
	r.setRotationStatus(rot)
	r.log.Info("CA rotation: re-issued leaves under the new CA", "kind", rot.Kind, "leaves", sum.Total, "reissued", sum.Reissued,
		"failed", sum.Failed, "took", r.cfg.Clock.Now().Sub(start))
}

// rotationStep applies one phase change with its audit record and reloads;
// change returns the audit note and whether the rotation ended.
func (r *Registry) rotationStep(ctx context.Context, change func(*store.CASet) (string, bool)) (string, error) {
	var phase, what string
	var rot store.CARotation
	var ended bool
	err := r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation == nil {
			return errors.New("no rotation in progress")
		}
		rot = *set.Rotation
		what, ended = change(&set)
		phase = ""
		if set.Rotation != nil {
			phase = set.Rotation.Phase
		}
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionCARotate, Actor: "meshca", Serial: set.IssuerSerial,
			Detail: fmt.Sprintf("kind=%s %s", rot.Kind, what)})
		return err
	})
	if err != nil {
		return "", err
	}
	if ended {
		r.rot.last.Store(&RotationDone{Kind: rot.Kind, StartedAt: rot.StartedAt, FinishedAt: r.cfg.Clock.Now().UTC(), Reissued: int(r.rot.reissued.Load())})
	}
	r.log.Info("CA rotation", "step", what, "phase", phase)
	return phase, r.reload(ctx)
}

// staleLeaves names the active identities whose current certificate is
// not from issuer.
func (r *Registry) staleLeaves(ctx context.Context, issuer string) ([]string, error) {
	ids, err := r.Identities(ctx)
	var names []string
	for _, st := range ids {
		if st.Identity.State == store.StateActive && st.Cert != nil && st.Cert.IssuerSerial != issuer {
			names = append(names, st.Identity.Name)
		}
	}
	return names, err
}

// nodeCerts counts the active nodes whose newest node certificate is
// unexpired and, unless issuer is "", from another issuer than issuer; last
// is when the last of those expires. A rotation asks every second while it
// waits: the store is read again only after something was committed.
func (r *Registry) nodeCerts(ctx context.Context, issuer string, now time.Time) (n int, last time.Time, err error) {
	scan, err := r.newestNodeCerts(ctx)
	if err != nil {
		return 0, time.Time{}, err
	}
	for _, c := range scan.certs {
		if !c.notAfter.After(now) || (issuer != "" && c.issuer == issuer) {
			continue
		}
		n++
		if c.notAfter.After(last) {
			last = c.notAfter
		}
	}
	return n, last, nil
}

// nodeCertScan is the newest node certificate of every active node, as the
// store held them at feed position pos (or later).
type nodeCertScan struct {
	pos   uint64
	certs []nodeCert
}

type nodeCert struct {
	issuer   string
	notAfter time.Time
}

func (r *Registry) newestNodeCerts(ctx context.Context) (*nodeCertScan, error) {
	pos := r.cfg.Store.FeedPos()
	if s := r.rot.nodeCerts.Load(); s != nil && s.pos == pos {
		return s, nil
	}
	scan := &nodeCertScan{pos: pos}
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		nodes, err := tx.Nodes()
		if err != nil {
			return err
		}
		for _, node := range nodes {
			if node.State != store.StateActive {
				continue
			}
			certs, err := tx.CertsFor(nodeSubject(node.Name))
			if err != nil {
				return err
			}
			if len(certs) == 0 {
				continue
			}
			c := certs[len(certs)-1]
			scan.certs = append(scan.certs, nodeCert{issuer: c.IssuerSerial, notAfter: c.NotAfter})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.rot.nodeCerts.Store(scan)
	return scan, nil
}

// Stale reports whether a certificate was issued by another CA than the
// current issuer while no rotation is in progress (a rotation re-issues
// such certificates itself); the renewal loop renews them at once.
func (r *Registry) Stale(issuerSerial string) bool {
	return issuerSerial != serialHex(r.CA().Issuer()) && r.RotationStatus() == nil
}

// RunCA advances CA rotations until ctx is done.
func (r *Registry) RunCA(ctx context.Context, acks Acks) error {
	for {
		_, err := r.AdvanceRotation(ctx, acks)
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, context.Canceled):
			r.log.Info("CA rotation step stopped: an emergency rotation replaced it")
		default:
			r.log.Error("CA rotation step failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.cfg.Clock.After(rotationTick):
		}
	}
}
