package authority

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
	// Leaves is how many leaf certificates this rotation moves to the new
	// CA (the active identities' current certificates from before the
	// switch); Reissued how many of them are under the new CA now, read
	// from the store; ReissueFailed how many of those left had a re-key
	// failure audited (the leader's re-keying retries them).
	Leaves, Reissued, ReissueFailed int
	// NodesConnected and NodesAcked: connected nodes, and those of them
	// that acknowledged what was last pushed to them.
	NodesConnected, NodesAcked int
	// OldNodeCerts counts active nodes whose node certificate is still
	// from the CA that is leaving (which meshca stops accepting when it
	// retires).
	OldNodeCerts int
	// OldAgentCerts counts agent holders' certificates still from the CA
	// that is leaving, which their agents re-key as soon as they learn
	// the issuer changed.
	OldAgentCerts int
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
	Reissued   int // leaves moved to the new CA
	Revoked    int // certificates of a compromised CA put on the CRL
}

// Acks tells how connected nodes stand: how many are connected, and how
// many of those have not acknowledged the secrets last pushed to them. The
// xDS server provides it.
type Acks func(ctx context.Context) (pending, connected int)

// rotationRun is the state of the rotation driver.
type rotationRun struct {
	mu sync.Mutex // one rotation step at a time
	// cancel stops an emergency rotation waiting for its leaves, so that
	// another emergency rotation does not wait for it.
	cancel atomic.Pointer[context.CancelFunc]
	// reissuedAt is when no leaf was left to re-key (under mu): the wait
	// for acknowledgements counts from it; reissuedSeq is the store's
	// sequence then, which other replicas' reports must cover.
	reissuedAt  time.Time
	reissuedSeq uint64
	// auditSeq is how far the audit log was read for re-key failures, and
	// failed the identities whose re-key failed, with the failure (both
	// under mu).
	auditSeq uint64
	failed   map[string]rekeyFailure
	// Progress of the rotation in progress.
	leaves, reissued, failures atomic.Int64
	wait                       atomic.Pointer[rotationWait]
	last                       atomic.Pointer[RotationDone]
	// nodeCerts follows every active node's newest node certificate
	// (nodecerts.go); leafIndex every active identity's current certificate
	// (leaves.go).
	nodeCerts nodeCertIndex
	leafIndex leafIndex
	// agentCerts follows agent nodes' certificates (agentcerts.go).
	agentCerts agentCertIndex
}

// rotationWait is what the rotation waits for, for its status.
type rotationWait struct {
	what             string
	until            time.Time
	connected, acked int
	oldNodeCerts     int
	oldAgentCerts    int
	ownWorkDone      bool
}

// RotationStatus returns the rotation in progress, or nil.
func (a *Authority) RotationStatus() *Rotation {
	if st := a.rotation.Load(); st != nil && st.Kind != "" {
		return st
	}
	return nil
}

// LastRotation returns what the last rotation that ended in this process
// did, or nil.
func (a *Authority) LastRotation() *RotationDone { return a.rot.last.Load() }

// StartRotation begins a rotation of the intermediate, or with root of the
// root and the intermediate. An intermediate rotation switches issuance to
// a new intermediate under the same root at once (leaves carry their
// intermediate: the bundle does not change). A root rotation first
// publishes old and new roots in every node's trust bundle and switches
// once connected nodes have acknowledged it. Then the registry's re-keying
// (which follows the change feed) re-issues every leaf under the new CA at
// full speed while RunCA counts the leaves left, waits (a bounded time) for
// connected nodes to acknowledge, and for nodes to renew node certificates
// from the previous CA (root or intermediate rotation: meshca accepts node
// certificates only from its issuing CAs); the previous CA retires at once
// after that.
func (a *Authority) StartRotation(ctx context.Context, root bool, actor string) error {
	err := a.refuseIfRotating(ctx)
	if err == nil {
		a.rot.mu.Lock()
		err = a.startRotation(ctx, root, actor)
		a.rot.mu.Unlock()
	}
	if err != nil && ctx.Err() == nil {
		a.deny(ctx, store.Event{Action: ActionCARotate, Actor: actor, Detail: err.Error()})
	}
	return err
}

// refuseIfRotating refuses at once while a rotation is in progress,
// without waiting for an emergency rotation that holds a.rot.mu.
func (a *Authority) refuseIfRotating(ctx context.Context) error {
	set, err := a.caSet(ctx)
	if err != nil {
		return err
	}
	if set.Rotation != nil {
		return a.busy(set.Rotation)
	}
	return nil
}

// startRotation runs under a.rot.mu.
func (a *Authority) startRotation(ctx context.Context, root bool, actor string) error {
	set, err := a.caSet(ctx)
	if err != nil {
		return err
	}
	if set.Rotation != nil {
		return a.busy(set.Rotation)
	}
	next, recs, err := a.nextCA(ctx, root)
	if err != nil {
		return err
	}
	now := a.cfg.Clock.Now().UTC()
	issuer := recs[0]
	var seq uint64
	err = a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation != nil {
			return a.busy(set.Rotation)
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
		ev, err := tx.Append(store.Event{Action: ActionCARotate, Actor: actor, Serial: issuer.Serial,
			Detail: fmt.Sprintf("kind=%s phase=%s previous_issuer=%s new_root=%s", rot.Kind, rot.Phase, rot.PreviousIssuer, rot.NextRoot)})
		seq = ev.Seq
		return err
	})
	if err != nil {
		return err
	}
	a.resetProgress(seq)
	a.rot.reissuedAt = time.Time{}
	if err := a.reload(ctx); err != nil {
		return err
	}
	a.log.Info("CA rotation started", "kind", kindOf(root), "next_issuer", issuer.Serial, "issuer_not_after", next.Issuer.NotAfter, "actor", actor)
	return nil
}

// nextCA makes the next CA: a new intermediate under the root that signs
// now, or with root a new root and intermediate. recs holds the issuer
// first, then the new root.
func (a *Authority) nextCA(ctx context.Context, root bool) (*ca.Material, []store.CA, error) {
	cur, err := a.loadCA(ctx)
	if err != nil {
		return nil, nil, err
	}
	next, err := ca.Rotate(cur, ca.GenerateOptions{
		TrustDomain: a.cfg.TrustDomain, KeyAlgorithm: a.cfg.KeyAlgorithm,
		RootTTL: a.cfg.Lifetimes.Root, IntermediateTTL: a.cfg.Lifetimes.Intermediate, Backdate: a.cfg.Lifetimes.Backdate, Now: a.cfg.Clock.Now().UTC(),
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
func (a *Authority) busy(rot *store.CARotation) error {
	what := fmt.Sprintf("%s rotation started %s, in phase %s since %s", rot.Kind, rot.StartedAt.Format(time.RFC3339), rot.Phase, rot.PhaseSince.Format(time.RFC3339))
	if rot.Emergency {
		what = "emergency " + what
	}
	if st := a.RotationStatus(); st != nil {
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
func (a *Authority) caSet(ctx context.Context) (store.CASet, error) {
	var set store.CASet
	err := a.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { set, err = tx.CASet(); return err })
	return set, err
}

// reload rebuilds the CA in use, the previous one during a rotation and
// the rotation status from the store. The CRL for the issuers now in use
// is signed and stored first: no leaf is issued under a new issuer before
// nodes can have its CRL.
func (a *Authority) reload(ctx context.Context) error {
	a.loadMu.Lock()
	defer a.loadMu.Unlock()
	m, set, err := a.loadSet(ctx)
	if err != nil {
		return err
	}
	if err := a.PublishCRL(ctx); err != nil {
		return err
	}
	c, err := a.newCA(m)
	if err != nil {
		return err
	}
	var prev *ca.CA
	// During either rotation meshca's server certificate stays with the
	// previous issuer: nodes pin the issuer they learnt at their last join
	// or renewal (see serverCA). Not after an emergency: that issuer may be
	// compromised.
	if rot := set.Rotation; rot != nil && rot.Phase == store.PhaseReissuing && rot.PreviousIssuer != set.IssuerSerial && !rot.Emergency {
		if prev, err = a.caFor(ctx, rot.PreviousIssuer, m); err != nil {
			return err
		}
	}
	a.ca.Store(c)
	a.prev.Store(prev)
	a.loaded.Store(&set)
	a.rot.wait.Store(nil)
	a.setRotationStatus(set.Rotation)
	return nil
}

// caFor builds a CA for a stored issuer, trusted by m's roots.
func (a *Authority) caFor(ctx context.Context, serial string, m *ca.Material) (*ca.CA, error) {
	var rec store.CA
	if err := a.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { rec, err = tx.CA(serial); return err }); err != nil {
		return nil, err
	}
	cert, key, err := parseCA(rec)
	if err != nil {
		return nil, err
	}
	return ca.New(ca.Config{
		TrustDomain: a.cfg.TrustDomain, KeyAlgorithm: a.cfg.KeyAlgorithm, Backdate: a.cfg.Lifetimes.Backdate, Clock: a.cfg.Clock, Logger: a.log,
		LintBeforeSigning: a.cfg.LintBeforeSigning,
		Material:          &ca.Material{Issuer: cert, IssuerKey: key, Roots: m.Roots, RootKey: m.RootKey},
	})
}

// resetProgress starts the progress of a rotation whose first audit record
// is seq; it runs under a.rot.mu.
func (a *Authority) resetProgress(seq uint64) {
	a.rot.leaves.Store(0)
	a.rot.reissued.Store(0)
	a.rot.failures.Store(0)
	a.rot.auditSeq, a.rot.failed = seq, nil
	a.rot.wait.Store(nil)
}

// setRotationStatus publishes the rotation's status from its record, the
// re-issue counters and what it waits for.
func (a *Authority) setRotationStatus(rot *store.CARotation) {
	if rot == nil {
		a.rotation.Store(&Rotation{})
		return
	}
	st := &Rotation{Kind: rot.Kind, Phase: rot.Phase, Emergency: rot.Emergency, StartedAt: rot.StartedAt, PhaseSince: rot.PhaseSince,
		Leaves: int(a.rot.leaves.Load()), Reissued: int(a.rot.reissued.Load()), ReissueFailed: int(a.rot.failures.Load())}
	if w := a.rot.wait.Load(); w != nil {
		st.WaitingFor, st.RetireAfter, st.OwnWorkDone = w.what, w.until, w.ownWorkDone
		st.NodesConnected, st.NodesAcked, st.OldNodeCerts, st.OldAgentCerts = w.connected, w.acked, w.oldNodeCerts, w.oldAgentCerts
	}
	a.rotation.Store(st)
}

// waitFor records what the rotation waits for and publishes it.
func (a *Authority) waitFor(rot *store.CARotation, w rotationWait) {
	a.rot.wait.Store(&w)
	a.setRotationStatus(rot)
}

// serverCA issues meshca's own server certificate. During a rotation that
// is the previous issuer until it retires: nodes verify meshca with the
// issuing CAs they were given (and, with a root rotation, their bundle
// file), which only learn the new CA when their node certificate is
// renewed.
func (a *Authority) serverCA() *ca.CA {
	if p := a.prev.Load(); p != nil {
		return p
	}
	return a.CA()
}

// AdvanceRotation moves a rotation on as far as what it waits for allows,
// and starts an intermediate rotation when the issuer is past Lifetimes.AutoRotate
// of its lifetime. It returns the phase after the steps ("" when none).
func (a *Authority) AdvanceRotation(ctx context.Context, acks Acks) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.rot.mu.Lock()
	defer a.rot.mu.Unlock()
	a.rot.cancel.Store(&cancel)
	defer a.rot.cancel.Store(nil)
	return a.advanceSteps(ctx, acks)
}

// advanceSteps runs under a.rot.mu: a step may make the next possible at
// once (a switch is followed by the re-issue).
func (a *Authority) advanceSteps(ctx context.Context, acks Acks) (string, error) {
	for i := 0; ; i++ {
		phase, moved, err := a.advance(ctx, acks)
		if err != nil || !moved || phase == "" || i == maxRotationSteps {
			return phase, err
		}
	}
}

// advance takes one step; moved tells whether the phase changed.
func (a *Authority) advance(ctx context.Context, acks Acks) (phase string, moved bool, err error) {
	set, err := a.caSet(ctx)
	if err != nil {
		return "", false, err
	}
	now := a.cfg.Clock.Now().UTC()
	rot := set.Rotation
	if rot == nil {
		return a.autoRotate(ctx, now)
	}
	switch rot.Phase {
	case store.PhasePublishing:
		return a.advancePublishing(ctx, set, acks, now)
	case store.PhaseReissuing:
		return a.advanceReissuing(ctx, set, acks, now)
	}
	return rot.Phase, false, fmt.Errorf("unknown rotation phase %q", rot.Phase)
}

func (a *Authority) autoRotate(ctx context.Context, now time.Time) (string, bool, error) {
	issuer := a.CA().Issuer()
	if now.Before(a.cfg.Lifetimes.AutoRotateAt(issuer.NotBefore, issuer.NotAfter)) {
		return "", false, nil
	}
	// One attempt an hour: an imported CA cannot be rotated here, and
	// each failure is audited.
	if last := a.autoRotateTried.Load(); last != nil && now.Sub(*last) < time.Hour {
		return "", false, nil
	}
	a.autoRotateTried.Store(&now)
	a.log.Warn(fmt.Sprintf("issuing CA is past %.0f%% of its lifetime: rotating it", 100*a.cfg.Lifetimes.AutoRotate), "issuer_not_after", issuer.NotAfter)
	if err := a.startRotation(ctx, false, "meshca"); err != nil {
		if ctx.Err() == nil {
			a.deny(ctx, store.Event{Action: ActionCARotate, Actor: "meshca", Detail: err.Error()})
		}
		return "", false, fmt.Errorf("automatic intermediate rotation (import the next CA if this one was imported): %w", err)
	}
	return store.PhaseReissuing, false, nil
}

// advancePublishing switches issuance to the new root once connected
// nodes acknowledged the bundle that holds it, at most ackWait after the
// grace for nodes that hold a node certificate to reconnect. With
// replicas, the nodes of every replica count (replicaAcks).
func (a *Authority) advancePublishing(ctx context.Context, set store.CASet, acks Acks, now time.Time) (string, bool, error) {
	rot := set.Rotation
	n, err := a.replicaAcks(ctx, set, 0, acks)
	if err != nil {
		return "", false, err
	}
	pending, connected := n.pending, n.connected
	w := rotationWait{connected: connected, acked: connected - pending}
	grace := rot.PhaseSince.Add(publishGrace)
	if s := a.started.Add(publishGrace); s.After(grace) {
		grace = s
	}
	w.until = grace.Add(ackWait)
	if n.waiting() && now.Before(w.until) {
		w.what = n.describe("the trust bundle with the new root", w.until)
		a.waitFor(rot, w)
		return rot.Phase, false, nil
	}
	// The grace is for nodes that hold a certificate but have not
	// reconnected: when every such node is connected, none is needed. The
	// nodes are counted only now, once the connected ones have the bundle,
	// so that the count does not compete with the push.
	if now.Before(grace) {
		holders, _, err := a.nodeCerts(ctx, "", now)
		if err != nil {
			return "", false, err
		}
		if connected < holders {
			w.what = fmt.Sprintf("nodes to reconnect and acknowledge the trust bundle with the new root (%d of %d connected node(s) did; until %s at least)", w.acked, connected, grace.Format(time.RFC3339))
			a.waitFor(rot, w)
			return rot.Phase, false, nil
		}
	}
	note := "switched issuance to the new CA"
	if n.waiting() {
		note += fmt.Sprintf(" with %d connected node(s) that had not acknowledged the new bundle in %s", pending, ackWait)
		if len(n.unreported) > 0 {
			note += fmt.Sprintf(" and %d replica(s) that had not reported their nodes", len(n.unreported))
		}
		a.log.Warn("CA rotation: switching although connected nodes have not acknowledged the new bundle", "pending", pending, "unreported_replicas", len(n.unreported), "waited", ackWait)
	}
	phase, err := a.rotationStep(ctx, func(set *store.CASet) (string, bool) {
		set.IssuerSerial, set.ChainSerials = rot.NextIssuer, nil
		// The new root signs from now on: put it first.
		roots := slices.DeleteFunc(slices.Clone(set.RootSerials), func(s string) bool { return s == rot.PreviousRoot })
		set.RootSerials = append(roots, rot.PreviousRoot)
		set.Rotation.Phase, set.Rotation.PhaseSince = store.PhaseReissuing, now
		return note, false
	})
	return phase, err == nil, err
}

// advanceReissuing waits for every leaf to be re-keyed under the new CA
// (the registry's re-keying does it, following the change feed), then for
// acknowledgements and for node certificates from the previous CA to be
// renewed or expire, and retires the previous CA.
func (a *Authority) advanceReissuing(ctx context.Context, set store.CASet, acks Acks, now time.Time) (string, bool, error) {
	rot := set.Rotation
	scan, err := a.scanLeaves(ctx, set.IssuerSerial, rot.PhaseSince)
	if err != nil {
		return "", false, err
	}
	a.rot.leaves.Store(int64(scan.total))
	a.rot.reissued.Store(int64(scan.total - len(scan.stale)))
	if len(scan.stale) > 0 {
		failed, last, err := a.rekeyFailures(ctx, scan.stale)
		if err != nil {
			return "", false, err
		}
		a.rot.failures.Store(int64(failed))
		a.rot.reissuedAt = time.Time{}
		what := fmt.Sprintf("%d leaf certificate(s) to re-issue under the new CA", len(scan.stale))
		if failed > 0 {
			what += fmt.Sprintf(" (%d failed, retried by the leader; last failure: %s)", failed, last)
		}
		a.waitFor(rot, rotationWait{what: what})
		return rot.Phase, false, nil
	}
	a.rot.failures.Store(0)
	if a.rot.reissuedAt.IsZero() {
		// Nothing to re-issue, or re-issued before a restart. The other
		// replicas' reports count once they cover the store as scanned.
		a.rot.reissuedAt, a.rot.reissuedSeq = now, scan.seq
	}
	if rot.Emergency {
		return a.finishEmergency(ctx)
	}
	acked, err := a.replicaAcks(ctx, set, a.rot.reissuedSeq, acks)
	if err != nil {
		return "", false, err
	}
	pending, connected := acked.pending, acked.connected
	w := rotationWait{connected: connected, acked: connected - pending, until: a.rot.reissuedAt.Add(ackWait)}
	if acked.waiting() && now.Before(w.until) {
		w.what = acked.describe("their certificates from the new CA", w.until)
		a.waitFor(rot, w)
		return rot.Phase, false, nil
	}
	// Nodes and admins are accepted only with certificates from the issuer
	// in use or, during a rotation, the previous one (peers.go): the
	// previous CA retires once no active node still depends on it. Nor
	// does it retire while agents' certificates from it are valid: their
	// agents re-key them once they learn the issuer changed.
	{
		n, last, err := a.nodeCerts(ctx, set.IssuerSerial, now)
		if err != nil {
			return "", false, err
		}
		agents, lastAgent, err := a.agentCerts(ctx, set.IssuerSerial, now)
		if err != nil {
			return "", false, err
		}
		if n > 0 || agents > 0 {
			w.oldNodeCerts, w.oldAgentCerts, w.ownWorkDone = n, agents, true
			for _, t := range []time.Time{last, lastAgent} {
				if t.After(w.until) {
					w.until = t
				}
			}
			var what []string
			if n > 0 {
				what = append(what, fmt.Sprintf("%d node(s) to renew their node certificate under the new CA (nodes renew it themselves, or at once with 'meshca bootstrap renew' on the node)", n))
			}
			if agents > 0 {
				what = append(what, fmt.Sprintf("%d agent certificate(s) to be re-keyed by their agents (meshca tells each connected agent of the switch and it re-keys at once; an agent that was not connected re-keys when it reconnects)", agents))
			}
			w.what = strings.Join(what, "; ") + "; the previous CA retires when they have, or when the last of those certificates expires"
			a.waitFor(rot, w)
			return rot.Phase, false, nil
		}
	}
	note := "retired the previous CA; rotation done"
	if acked.waiting() {
		note += fmt.Sprintf(" (%d connected node(s) had not acknowledged their new certificates in %s)", pending, ackWait)
		a.log.Warn("CA rotation: retiring the previous CA although connected nodes have not acknowledged their certificates", "pending", pending)
	}
	phase, err := a.rotationStep(ctx, func(set *store.CASet) (string, bool) {
		if rot.PreviousRoot != "" {
			set.RootSerials = slices.DeleteFunc(set.RootSerials, func(s string) bool { return s == rot.PreviousRoot })
		}
		set.Rotation = nil
		return note, true
	})
	return phase, err == nil, err
}

// rotationStep applies one phase change with its audit record and reloads;
// change returns the audit note and whether the rotation ended.
func (a *Authority) rotationStep(ctx context.Context, change func(*store.CASet) (string, bool)) (string, error) {
	var phase, what string
	var rot store.CARotation
	var ended bool
	// The record of an ending rotation is in place before the commit
	// reaches the feed, from which the rotation's state is read: a reader
	// never sees the rotation gone and its record missing. A commit that
	// fails, or a run that does not end it, puts the previous one back.
	prev := a.rot.last.Load()
	err := a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation == nil {
			return errors.New("no rotation in progress")
		}
		rot = *set.Rotation
		what, ended = change(&set)
		if ended {
			a.rot.last.Store(&RotationDone{Kind: rot.Kind, StartedAt: rot.StartedAt, FinishedAt: a.cfg.Clock.Now().UTC(), Reissued: int(a.rot.reissued.Load())})
		} else {
			a.rot.last.Store(prev)
		}
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
		a.rot.last.Store(prev)
		return "", err
	}
	a.log.Info("CA rotation", "step", what, "phase", phase)
	return phase, a.reload(ctx)
}

// rekeyFailures reads the audit log on from where it was last read for
// re-key failures (ActionCARotateReissue, failed), which the registry
// audits once per identity and rotation, and returns how many of the
// stale identities failed and the latest of their failures. It runs under
// a.rot.mu.
func (a *Authority) rekeyFailures(ctx context.Context, stale []string) (n int, last string, err error) {
	var evs []store.Event
	if err := a.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { evs, err = tx.Events(a.rot.auditSeq, 0); return err }); err != nil {
		return 0, "", err
	}
	for _, ev := range evs {
		a.rot.auditSeq = ev.Seq
		if ev.Action != ActionCARotateReissue || ev.Outcome != store.OutcomeFailed {
			continue
		}
		if a.rot.failed == nil {
			a.rot.failed = map[string]rekeyFailure{}
		}
		// The detail is the rotation's note, then the error.
		_, why, _ := strings.Cut(ev.Detail, ": ")
		a.rot.failed[ev.Identity] = rekeyFailure{seq: ev.Seq, why: why}
	}
	var latest rekeyFailure
	for _, name := range stale {
		if f, ok := a.rot.failed[name]; ok {
			n++
			if f.seq > latest.seq {
				latest, last = f, name+": "+f.why
			}
		}
	}
	return n, last, nil
}

// rekeyFailure is the audited failure of one identity's re-key.
type rekeyFailure struct {
	seq uint64
	why string
}

// Stale reports whether a certificate was issued by another CA than the
// current issuer while no rotation is in progress (during a rotation the
// registry's re-keying moves such certificates); the renewal loop renews
// them at once.
func (a *Authority) Stale(issuerSerial string) bool {
	return issuerSerial != serialHex(a.CA().Issuer()) && a.RotationStatus() == nil
}

// closeIndexes stops following the feed for the counts of a rotation:
// nothing counts while no rotation is in progress.
func (a *Authority) closeIndexes() {
	a.closeNodeCerts()
	a.closeLeaves()
	a.closeAgentCerts()
}

// RunCA advances CA rotations until ctx is done.
func (a *Authority) RunCA(ctx context.Context, acks Acks) error {
	defer a.closeIndexes()
	for {
		_, err := a.AdvanceRotation(ctx, acks)
		if a.RotationStatus() == nil {
			a.closeIndexes()
		}
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, context.Canceled):
			a.log.Info("CA rotation step stopped: an emergency rotation replaced it")
		default:
			a.log.Error("CA rotation step failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.cfg.Clock.After(rotationTick):
		}
	}
}
