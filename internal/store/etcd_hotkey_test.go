package store_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// TestEtcdReplicasShareOnlyTheAuditSequence has two replicas write
// disjoint records (one identity per Update, each with its audit event),
// and the same writes made through one replica as a baseline. The records
// share no key: every run of a function again after a conflict comes from
// the one key all writes share, P/last/audit, the audit sequence that
// orders the log gaplessly. The test proves that no write is lost and the
// log stays gapless, and prints the re-runs and the throughput of both
// runs for RELIABILITY.md.
func TestEtcdReplicasShareOnlyTheAuditSequence(t *testing.T) {
	const writers, each = 4, 12
	run := func(name string, replicas []*store.Store) (runs int64, took time.Duration) {
		t.Helper()
		var n atomic.Int64
		errs := make(chan error, len(replicas)*writers)
		start := time.Now()
		for r, s := range replicas {
			for w := range writers {
				go func() {
					for i := range each {
						id := fmt.Sprintf("%s-%d-%d-%d", name, r, w, i)
						if err := s.Update(ctx, audited("add", func(tx *store.Tx) error {
							n.Add(1)
							return tx.PutIdentity(store.Identity{Name: id})
						})); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
		}
		for range len(replicas) * writers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		took = time.Since(start)
		total := len(replicas) * writers * each
		view(t, replicas[0], func(tx *store.Tx) error {
			ids, err := tx.Identities()
			if err != nil {
				return err
			}
			if len(ids) != total {
				t.Errorf("%s: %d identities after %d acknowledged writes", name, len(ids), total)
			}
			evs, err := tx.Events(0, 0)
			if err != nil {
				return err
			}
			for i, ev := range evs {
				if ev.Seq != uint64(i+1) {
					t.Fatalf("%s: event %d has Seq %d: the log has a gap", name, i, ev.Seq)
				}
			}
			return nil
		})
		return n.Load(), took
	}
	a, b := twoReplicas(t)
	const total = 2 * writers * each
	// The baseline writes as much through one replica, on its own prefix.
	one, _ := twoReplicas(t)
	oneRuns, oneTook := run("one", []*store.Store{one, one})
	twoRuns, twoTook := run("two", []*store.Store{a, b})
	t.Logf("%d audited writes of disjoint records: one replica %d runs (%d again) in %s, %.0f/s; two replicas %d runs (%d again after a conflict on the audit sequence) in %s, %.0f/s; two/one throughput %.2fx",
		total, oneRuns, oneRuns-total, oneTook.Round(time.Millisecond), float64(total)/oneTook.Seconds(),
		twoRuns, twoRuns-total, twoTook.Round(time.Millisecond), float64(total)/twoTook.Seconds(), oneTook.Seconds()/twoTook.Seconds())
	check(t, a)
}
