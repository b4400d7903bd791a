package authority

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// AbortRotation withdraws a root rotation that has not switched issuance
// yet: the new root leaves the bundle, which is pushed to every node again,
// and nothing was issued under it. A rotation past its switch cannot be
// aborted (ErrRotating says why and what to do).
func (a *Authority) AbortRotation(ctx context.Context, actor string) error {
	a.rot.mu.Lock()
	defer a.rot.mu.Unlock()
	err := a.abortRotation(ctx, actor)
	if err != nil && ctx.Err() == nil {
		a.deny(ctx, store.Event{Action: ActionCARotate, Actor: actor, Detail: "abort: " + err.Error()})
	}
	return err
}

func (a *Authority) abortRotation(ctx context.Context, actor string) error {
	var rot store.CARotation
	err := a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation == nil {
			return fmt.Errorf("%w, so there is nothing to abort", ErrNoRotation)
		}
		rot = *set.Rotation
		if rot.Phase != store.PhasePublishing {
			return fmt.Errorf("%w: the %s rotation cannot be aborted: issuance switched to the new CA at %s and leaves are issued under it; "+
				"follow it with 'meshca ca rotate --wait', or replace it with 'meshca ca rotate --emergency'", ErrRotating, rot.Kind, rot.PhaseSince.Format(time.RFC3339))
		}
		set.RootSerials = slices.DeleteFunc(set.RootSerials, func(s string) bool {
			if rot.NextRoot != "" {
				return s == rot.NextRoot
			}
			return s != rot.PreviousRoot // a record from before NextRoot was kept
		})
		set.Rotation = nil
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionCARotate, Actor: actor, Serial: set.IssuerSerial,
			Detail: fmt.Sprintf("kind=%s aborted in phase %s: new root %s withdrawn from the bundle, nothing was issued under it", rot.Kind, rot.Phase, rot.NextRoot)})
		return err
	})
	if err != nil {
		return err
	}
	a.rot.last.Store(&RotationDone{Kind: rot.Kind, Aborted: true, StartedAt: rot.StartedAt, FinishedAt: a.cfg.Clock.Now().UTC()})
	a.log.Warn("CA rotation aborted", "kind", rot.Kind, "withdrawn_root", rot.NextRoot, "actor", actor)
	return a.reload(ctx)
}

// EmergencyRotation replaces a CA whose keys may be compromised, now,
// superseding any rotation in progress: a new intermediate (with root, a
// new root and intermediate) issues from now on, every active identity is
// re-keyed under it at full speed, every unexpired identity certificate of
// the replaced issuers is revoked (it appears in the CRL), and the roots
// other than the new issuer's leave the bundle. Node certificates are not
// revoked, but once the rotation ends meshca no longer accepts them (nor
// admin certificates) from the replaced issuer, and nodes verify meshca
// by the issuers they were given: after any emergency rotation nodes join
// again with a new token. The re-keying is the registry's, which follows
// the change feed on the leader. EmergencyRotation returns when all of
// that is done; when a re-key failed and nothing moved for a tick
// (rotationTick), saying so; or when ctx ends. RunCA then finishes it.
func (a *Authority) EmergencyRotation(ctx context.Context, root bool, actor string) (RotationDone, error) {
	if c := a.rot.cancel.Load(); c != nil {
		(*c)() // stop another emergency rotation waiting for its leaves
	}
	a.rot.mu.Lock()
	defer a.rot.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.rot.cancel.Store(&cancel)
	defer a.rot.cancel.Store(nil)
	done, err := a.emergencyRotation(ctx, root, actor)
	if err != nil && ctx.Err() == nil {
		a.deny(ctx, store.Event{Action: ActionCARotate, Actor: actor, Detail: "emergency: " + err.Error()})
	}
	return done, err
}

func (a *Authority) emergencyRotation(ctx context.Context, root bool, actor string) (RotationDone, error) {
	next, recs, err := a.nextCA(ctx, root)
	if err != nil {
		return RotationDone{}, err
	}
	issuer := recs[0]
	now := a.cfg.Clock.Now().UTC()
	var rot store.CARotation
	var superseded string
	var seq uint64
	// Subscribed before the switch: no re-key after it goes unseen.
	sub := a.cfg.Store.Subscribe(0)
	defer sub.Close()
	err = a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if err := tx.PutCA(rec); err != nil {
				return err
			}
		}
		rot = store.CARotation{Kind: kindOf(root), Phase: store.PhaseReissuing, Emergency: true,
			PreviousIssuer: set.IssuerSerial, Compromised: []string{set.IssuerSerial}, StartedAt: now, PhaseSince: now}
		withdrawn := ""
		if old := set.Rotation; old != nil {
			superseded = fmt.Sprintf("%s rotation in phase %s", old.Kind, old.Phase)
			if old.Emergency {
				superseded = "emergency " + superseded
			}
			for _, s := range append([]string{old.PreviousIssuer}, old.Compromised...) {
				if s != "" && !slices.Contains(rot.Compromised, s) {
					rot.Compromised = append(rot.Compromised, s)
				}
			}
			if old.Phase == store.PhasePublishing {
				withdrawn = old.NextRoot // issued nothing: it goes now
			}
		}
		signing := recs[len(recs)-1].Serial // the new root, or the root of the new intermediate
		if !root {
			signing = set.RootSerials[0]
		}
		roots := []string{signing}
		for _, s := range set.RootSerials {
			if s != signing && s != withdrawn {
				roots = append(roots, s)
				rot.RetireRoots = append(rot.RetireRoots, s)
			}
		}
		set.IssuerSerial, set.ChainSerials, set.RootSerials, set.Rotation = issuer.Serial, nil, roots, &rot
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		ev, err := tx.Append(store.Event{Action: ActionCARotate, Actor: actor, Serial: issuer.Serial,
			Detail: fmt.Sprintf("kind=%s emergency: compromised_issuers=%s superseded=%q signing_root=%s", rot.Kind, strings.Join(rot.Compromised, ","), superseded, signing)})
		seq = ev.Seq
		return err
	})
	if err != nil {
		return RotationDone{}, err
	}
	a.resetProgress(seq)
	a.rot.reissuedAt = time.Time{}
	a.log.Warn("emergency CA rotation: re-keying every identity and revoking the replaced CA's certificates",
		"kind", rot.Kind, "next_issuer", issuer.Serial, "issuer_not_after", next.Issuer.NotAfter, "superseded", superseded, "actor", actor)
	if err := a.reload(ctx); err != nil {
		return RotationDone{}, err
	}
	if err := a.awaitEmergency(ctx, sub); err != nil {
		return RotationDone{}, err
	}
	if d := a.rot.last.Load(); d != nil {
		return *d, nil
	}
	return RotationDone{}, nil
}

// awaitEmergency follows the feed while the leaves are re-keyed and, once
// none is left, revokes and retires (nothing else is waited for). It
// gives up, saying what is left, at a tick when the re-key of every leaf
// left has failed (and is retried), or when no leaf was re-keyed for
// emergencyStall ticks (no re-keying runs: the leader is out of reach).
func (a *Authority) awaitEmergency(ctx context.Context, sub *store.Subscription) error {
	changed := make(chan struct{}, 1)
	pctx, stop := context.WithCancel(ctx)
	var pump sync.WaitGroup
	pump.Go(func() {
		for {
			if _, err := sub.Next(pctx); err != nil {
				return
			}
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	})
	defer pump.Wait()
	defer stop()
	none := func(context.Context) (int, int) { return 0, 0 }
	var (
		tick    <-chan time.Time
		armed   int64 // leaves left when tick was armed
		ticked  bool
		stalled int // ticks in a row without a leaf re-keyed
	)
	for {
		phase, err := a.advanceSteps(ctx, none)
		if err != nil {
			return err
		}
		if phase == "" {
			return nil
		}
		left := a.rot.leaves.Load() - a.rot.reissued.Load()
		if ticked {
			stalled++
			if left < armed {
				stalled = 0
			}
			if left > 0 && left == a.rot.failures.Load() || stalled >= emergencyStall {
				what := "the leader's re-keying"
				if st := a.RotationStatus(); st != nil && st.WaitingFor != "" {
					what = st.WaitingFor
				}
				return fmt.Errorf("%w: the emergency rotation switched to the new CA but is not done (waiting for %s); meshca keeps at it: follow it with 'meshca ca rotate --wait'", ErrRotating, what)
			}
			tick, ticked = nil, false
		}
		if tick == nil {
			tick, armed = a.cfg.Clock.After(rotationTick), left
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-tick:
			ticked = true
		}
	}
}

// emergencyStall is how many ticks EmergencyRotation waits for a leaf to
// be re-keyed at all before it returns.
const emergencyStall = 30

// finishEmergency revokes every unexpired identity certificate of the
// compromised issuers, drops the roots that leave, and ends the rotation.
func (a *Authority) finishEmergency(ctx context.Context) (string, bool, error) {
	var revoked int
	var rot store.CARotation
	err := a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		revoked = 0
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		if set.Rotation == nil {
			return errors.New("no rotation in progress")
		}
		rot = *set.Rotation
		now := a.cfg.Clock.Now().UTC()
		ids, err := tx.Identities()
		if err != nil {
			return err
		}
		for _, id := range ids {
			certs, err := tx.CertsFor(id.Name)
			if err != nil {
				return err
			}
			for _, c := range certs {
				if !slices.Contains(rot.Compromised, c.IssuerSerial) || !c.NotAfter.After(now) {
					continue
				}
				if _, err := tx.Revocation(c.Serial); err == nil {
					continue
				}
				if err := tx.PutRevocation(store.Revocation{Serial: c.Serial, Identity: id.Name, IssuerSerial: c.IssuerSerial,
					Reason: ReasonCACompromise, NotAfter: c.NotAfter, RevokedAt: now}); err != nil {
					return err
				}
				revoked++
			}
		}
		set.RootSerials = slices.DeleteFunc(set.RootSerials, func(s string) bool { return slices.Contains(rot.RetireRoots, s) })
		set.Rotation = nil
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionCARotate, Actor: "meshca", Serial: set.IssuerSerial,
			Detail: fmt.Sprintf("kind=%s emergency: revoked %d certificate(s) of issuer(s) %s reason=%s; retired root(s) %s; rotation done",
				rot.Kind, revoked, strings.Join(rot.Compromised, ","), ReasonCACompromise, strings.Join(rot.RetireRoots, ","))})
		return err
	})
	if err != nil {
		return "", false, err
	}
	a.rot.last.Store(&RotationDone{Kind: rot.Kind, Emergency: true, StartedAt: rot.StartedAt, FinishedAt: a.cfg.Clock.Now().UTC(),
		Reissued: int(a.rot.reissued.Load()), Revoked: revoked})
	a.log.Warn("emergency CA rotation done", "kind", rot.Kind, "reissued", a.rot.reissued.Load(), "revoked", revoked,
		"compromised_issuers", strings.Join(rot.Compromised, ","))
	// Every node gets the new bundle and the CRL with the revoked serials.
	return "", true, a.reload(ctx)
}
