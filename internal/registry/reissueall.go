package registry

import (
	"context"
	"fmt"
	"sync"

	"github.com/meshca/meshca/internal/store"
)

// ActionReissueAll audits a run of ReissueAll (one record for the run; each
// identity also gets its own identity.reissue record).
const ActionReissueAll = "identity.reissue_all"

const (
	// reissueAllWorkers is how many identities ReissueAll re-keys at once:
	// enough that every core signs and concurrent commits share an fsync.
	reissueAllWorkers = 64
	// maxReissueErrors bounds the failures ReissueProgress lists.
	maxReissueErrors = 20
)

// ReissueProgress reports how far ReissueAll got.
type ReissueProgress struct {
	Total, Reissued, Failed int
	// Errors lists up to 20 failures as "NAME: error".
	Errors []string
}

// ReissueAll re-keys every active identity now: each gets a new key and
// certificate, recorded and audited as ReissueIdentity does, and pushed to
// its nodes as soon as it is recorded. It is for emergencies (a suspected
// key compromise, a replaced CA); the rotation loop spreads routine
// renewals out. A failure does not stop the others; a cancelled ctx stops
// starting new ones; one run at a time. progress, when not nil, is called after each identity,
// from several goroutines at once. One more audit record sums the run up.
func (r *Registry) ReissueAll(ctx context.Context, actor string, progress func(ReissueProgress)) (ReissueProgress, error) {
	if !r.reissuingAll.CompareAndSwap(false, true) {
		return ReissueProgress{}, fmt.Errorf("a re-key of every identity is already running (%w); wait for it to end: meshca audit list shows an %s record when it has", ErrExists, ActionReissueAll)
	}
	defer r.reissuingAll.Store(false)
	ids, err := r.Identities(ctx)
	if err != nil {
		return ReissueProgress{}, err
	}
	var names []string
	for _, st := range ids {
		if st.Identity.State == store.StateActive && st.Cert != nil {
			names = append(names, st.Identity.Name)
		}
	}
	r.log.Info("re-keying every identity", "identities", len(names), "actor", actor)
	sum := r.reissueEach(ctx, names, func(ctx context.Context, name string) error {
		_, err := r.ReissueIdentity(ctx, name, actor)
		return err
	}, progress)
	detail := fmt.Sprintf("identities=%d reissued=%d failed=%d", sum.Total, sum.Reissued, sum.Failed)
	if err := ctx.Err(); err != nil {
		detail += " stopped=" + err.Error()
	}
	r.log.Info("re-keyed identities", "identities", sum.Total, "reissued", sum.Reissued, "failed", sum.Failed, "actor", actor)
	// The record outlives a cancelled request: it says what was done.
	if err := r.cfg.Store.Update(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		_, err := tx.Append(store.Event{Action: ActionReissueAll, Actor: actor, Detail: detail})
		return err
	}); err != nil {
		return sum, fmt.Errorf("record the run: %w", err)
	}
	return sum, ctx.Err()
}

// reissueEach calls one for every name, reissueAllWorkers at once: enough
// that every core signs and concurrent commits share an fsync. A failure
// does not stop the others; a cancelled ctx stops starting new ones.
// progress, when not nil, is called after each name from several
// goroutines at once.
func (r *Registry) reissueEach(ctx context.Context, names []string, one func(context.Context, string) error, progress func(ReissueProgress)) ReissueProgress {
	var (
		mu  sync.Mutex
		sum = ReissueProgress{Total: len(names)}
	)
	work := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < min(reissueAllWorkers, len(names)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				err := one(ctx, name)
				mu.Lock()
				if err != nil {
					sum.Failed++
					if len(sum.Errors) < maxReissueErrors {
						sum.Errors = append(sum.Errors, fmt.Sprintf("%s: %v", name, err))
					}
				} else {
					sum.Reissued++
				}
				p := sum
				p.Errors = nil
				mu.Unlock()
				if progress != nil {
					progress(p)
				}
			}
		}()
	}
feed:
	for _, name := range names {
		select {
		case work <- name:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return sum
}
