package store_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/meshca/meshca/internal/store"
)

// issue writes one certificate and its audit event, the shape of a real
// issuance.
func issue(s *store.Store, n uint64) error {
	c := testCert(fmt.Sprintf("id-%d", n%16), fmt.Sprintf("%016x", n), t0)
	return s.Update(ctx, func(tx *store.Tx) error {
		if err := putCert(tx, c); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{Action: "cert.issue", Identity: c.Identity, Serial: c.Serial})
		return err
	})
}

func BenchmarkUpdateSerial(b *testing.B) {
	s, _ := newStore(b)
	var n uint64
	for b.Loop() {
		n++
		if err := issue(s, n); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkUpdateParallel(b *testing.B) {
	s, _ := newStore(b)
	var n atomic.Uint64
	// Many callers per CPU: group commit pays off with concurrency, as
	// with many nodes asking for certificates at once.
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := issue(s, n.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}
