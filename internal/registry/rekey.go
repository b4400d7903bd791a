package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/store"
)

// RekeyRetry is how long the re-keying of a CA rotation waits before it
// tries the leaves that failed again.
const RekeyRetry = 5 * time.Second

// rekeyActor is the actor of the audit records of a rotation's re-keys.
const rekeyActor = "meshca"

// rekeyState is what the re-keying remembers of the rotation in progress.
type rekeyState struct {
	mu sync.Mutex // one pass at a time
	// rotation names the rotation the failures below belong to.
	rotation string
	// audited are the identities whose re-key failure this rotation has
	// audited: a failure is audited once, its retries only logged.
	audited map[string]bool
}

// RekeyResult is what one pass of Rekey did.
type RekeyResult struct {
	// Rotating is true while a rotation moves leaves to a new issuer.
	Rotating bool
	// Total, Reissued and Failed count the leaves of this pass.
	Total, Reissued, Failed int
}

// Rekey re-keys, while a CA rotation is in phase reissuing (leaves move
// to the new issuer), every active identity whose current certificate is
// from another issuer than the CA set's, with ReissueAll's workers. Each
// re-key is recorded and audited as authority.ActionCARotateReissue with
// the rotation in the detail ("ca_rotation=KIND", "emergency=true"); the
// first failure of each identity in a rotation is audited (failed) too,
// the others only logged. Agent nodes' own certificates for their
// identities (HolderCert) are not re-keyed: meshca holds none of their
// keys, so an agent node moves to the new issuer only with its next CSR,
// and the rotation does not wait for it. A cancelled ctx stops starting
// new re-keys.
func (r *Registry) Rekey(ctx context.Context) (RekeyResult, error) { return r.rekeyOnly(ctx, nil) }

// rekeyOnly is Rekey for the identities in only, or all when only is nil.
func (r *Registry) rekeyOnly(ctx context.Context, only map[string]bool) (RekeyResult, error) {
	r.rekey.mu.Lock()
	defer r.rekey.mu.Unlock()
	var (
		set   store.CASet
		stale []string
	)
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		var err error
		if set, err = tx.CASet(); err != nil {
			return err
		}
		if set.Rotation == nil || set.Rotation.Phase != store.PhaseReissuing {
			return nil
		}
		stale, err = staleIdentities(tx, set.IssuerSerial, only)
		return err
	})
	if err != nil {
		return RekeyResult{}, fmt.Errorf("registry: re-key: %w", err)
	}
	rot := set.Rotation
	if rot == nil || rot.Phase != store.PhaseReissuing {
		r.rekey.rotation, r.rekey.audited = "", nil
		return RekeyResult{}, nil
	}
	if id := rot.Kind + "/" + rot.StartedAt.String() + "/" + set.IssuerSerial; id != r.rekey.rotation {
		r.rekey.rotation, r.rekey.audited = id, map[string]bool{}
	}
	res := RekeyResult{Rotating: true, Total: len(stale)}
	if len(stale) == 0 {
		return res, nil
	}
	// Sign under the issuer the set names, even if this process has not
	// handled the switch yet.
	if err := r.cfg.Issuer.Refresh(ctx); err != nil {
		return res, fmt.Errorf("registry: re-key: load the new CA: %w", err)
	}
	note := "ca_rotation=" + rot.Kind
	if rot.Emergency {
		note += " emergency=true"
	}
	start := r.cfg.Clock.Now()
	var auditMu sync.Mutex
	sum := r.reissueEach(ctx, stale, func(ctx context.Context, name string) error {
		_, _, err := r.reissue(ctx, name, rekeyActor, authority.ActionCARotateReissue, note)
		if err == nil || ctx.Err() != nil {
			return err
		}
		auditMu.Lock()
		first := !r.rekey.audited[name]
		r.rekey.audited[name] = true
		auditMu.Unlock()
		r.log.Error("CA rotation: re-key failed; will retry", "identity", name, "err", err, "retry_in", RekeyRetry)
		if first && !errors.Is(err, ca.ErrLint) { // a lint failure is audited where it happens
			r.deny(ctx, store.Event{Action: authority.ActionCARotateReissue, Actor: rekeyActor, Identity: name, Outcome: store.OutcomeFailed, Detail: note + ": " + err.Error()})
		}
		return err
	}, nil)
	res.Reissued, res.Failed = sum.Reissued, sum.Failed
	r.log.Info("CA rotation: re-keyed leaves under the new CA", "kind", rot.Kind, "leaves", sum.Total, "reissued", sum.Reissued,
		"failed", sum.Failed, "took", r.cfg.Clock.Now().Sub(start))
	return res, ctx.Err()
}

// staleIdentities names the active identities (of only, unless it is nil)
// whose current certificate is not from issuer.
func staleIdentities(tx *store.Tx, issuer string, only map[string]bool) ([]string, error) {
	var ids []store.Identity
	if only == nil {
		var err error
		if ids, err = tx.Identities(); err != nil {
			return nil, err
		}
	}
	for name := range only {
		id, err := tx.Identity(name)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	var names []string
	for _, id := range ids {
		if id.State != store.StateActive || id.CurrentSerial == "" {
			continue
		}
		c, err := tx.Cert(id.CurrentSerial)
		if err != nil {
			return nil, err
		}
		if c.IssuerSerial != issuer {
			names = append(names, id.Name)
		}
	}
	return names, nil
}

// RunRekey re-keys leaves for CA rotations until ctx ends: it runs Rekey
// once at start and again whenever the change feed reports a change of
// the CA set (a rotation started, switched or was superseded) or, while
// leaves move, of an identity (one issued under the previous CA by a
// replica that had not seen the switch yet), and retries failures every
// RekeyRetry. A change of the CA set stops a pass in flight and starts
// another under the new set. Run it on the leader only: one re-keying for
// the whole mesh.
func (r *Registry) RunRekey(ctx context.Context) error {
	sub := r.cfg.Store.Subscribe(0)
	defer sub.Close()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		passMu   sync.Mutex
		cancel   context.CancelFunc // of the pass in flight
		full     = true             // the next pass looks at every identity
		names    map[string]bool    // else at these, changed since the last
		rotating atomic.Bool        // the last pass found leaves moving
	)
	wake := make(chan struct{}, 1)
	wake <- struct{}{} // the check at start
	feedErr := make(chan error, 1)
	var pump sync.WaitGroup
	pump.Go(func() {
		for {
			b, err := sub.Next(ctx)
			if err != nil {
				feedErr <- err
				return
			}
			ca, ids := changed(b)
			if !ca && !(len(ids) > 0 && rotating.Load()) {
				continue
			}
			passMu.Lock()
			if ca {
				full = true
				if cancel != nil {
					cancel()
				}
			}
			if names == nil {
				names = map[string]bool{}
			}
			for _, n := range ids {
				names[n] = true
			}
			passMu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	})
	defer pump.Wait()
	defer stop()
	var (
		retry   <-chan time.Time
		retried bool
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-feedErr:
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return nil
			}
			return fmt.Errorf("registry: re-key: feed: %w", err)
		case <-wake:
		case <-retry:
			retried, retry = true, nil
		}
		passMu.Lock()
		pctx, c := context.WithCancel(ctx)
		cancel = c
		only := names
		if full || retried || len(only) == 0 {
			only = nil
		}
		full, names, retried = false, nil, false
		passMu.Unlock()
		// A pass over a few changed identities leaves the retry of
		// earlier failures armed.
		res, err := r.rekeyOnly(pctx, only)
		rotating.Store(res.Rotating)
		passMu.Lock()
		cancel = nil
		superseded := pctx.Err() != nil
		passMu.Unlock()
		c()
		switch {
		case ctx.Err() != nil:
			return nil
		case superseded:
			continue // the CA set changed: the next pass is queued
		case err != nil || res.Failed > 0:
			if err != nil {
				r.log.Error("CA rotation: re-key pass failed; will retry", "err", err, "retry_in", RekeyRetry)
			}
			if retry == nil {
				retry = r.cfg.Clock.After(RekeyRetry)
			}
		case only == nil:
			retry = nil // nothing left to retry
		}
	}
}

// changed tells whether a batch may have changed the CA set, and names
// the identities it changed.
func changed(b store.Batch) (ca bool, identities []string) {
	if b.Resync {
		return true, nil
	}
	for _, c := range b.Changes {
		switch c.Kind {
		case store.KindCA:
			ca = true
		case store.KindIdentity:
			identities = append(identities, c.Key)
		}
	}
	return ca, identities
}
