package authority

import (
	"context"
	"errors"
	"reflect"

	"github.com/meshca/meshca/internal/store"
)

// Run follows the store's change feed until ctx ends: a committed
// revocation gets its CRL signed and stored, and a CA set changed by
// another writer becomes the CA in use (with its CRL). Nothing calls the
// authority to tell it; it reads what was committed.
func (a *Authority) Run(ctx context.Context) error {
	sub := a.cfg.Store.Subscribe(0)
	defer sub.Close()
	// Read after subscribing: whatever was committed before is covered.
	a.afterChanges(ctx, true, true)
	for {
		b, err := sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return nil
			}
			return err
		}
		caSet, revoked := b.Resync, b.Resync
		for _, c := range b.Changes {
			switch c.Kind {
			case store.KindCA:
				caSet = true
			case store.KindRevocation:
				revoked = true
			}
		}
		a.afterChanges(ctx, caSet, revoked)
	}
}

func (a *Authority) afterChanges(ctx context.Context, caSet, revoked bool) {
	if caSet {
		changed, err := a.refresh(ctx)
		if err != nil && ctx.Err() == nil {
			a.log.Error("the CA set changed but the CA in use was not reloaded; will retry at the next change", "err", err)
		}
		if changed {
			return // reload stored the CRL
		}
	}
	if !caSet && !revoked {
		return
	}
	_ = a.PublishCRL(ctx) // a failure is logged, and retried by RunCRL
}

// Refresh makes the CA in use the one the store's CA set names, when that
// changed since it was loaded: a commit by another writer whose notice on
// the change feed Run has not handled yet. The re-keying of a CA rotation
// calls it before it signs, so that it signs under the new issuer.
func (a *Authority) Refresh(ctx context.Context) error {
	_, err := a.refresh(ctx)
	return err
}

// refresh reloads when the CA set changed, and says whether it had.
func (a *Authority) refresh(ctx context.Context) (bool, error) {
	changed, err := a.caSetChanged(ctx)
	if err != nil || !changed {
		return false, err
	}
	return true, a.reload(ctx)
}

// caSetChanged tells whether the stored CA set differs from the one the CA
// in use was built from.
func (a *Authority) caSetChanged(ctx context.Context) (bool, error) {
	var set store.CASet
	if err := a.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { set, err = tx.CASet(); return err }); err != nil {
		return false, err
	}
	cur := a.loaded.Load()
	return cur == nil || !reflect.DeepEqual(*cur, set), nil
}
