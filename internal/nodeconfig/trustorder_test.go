package nodeconfig

import (
	"context"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// TestReorderedRootsAreNoChange checks that a bundle holding the same
// roots in another order (a root rotation's switch) is not handed over
// again, while one that gains or loses a root is.
func TestReorderedRootsAreNoChange(t *testing.T) {
	f := newFixture(t, 0)
	oldRoot, newRoot := f.trust.bundlePEM(), rootPEM(t, "root-2")
	f.sync(t)
	f.pub.expect(t, "trust")
	f.run(t)
	// announce hands a bundle over as the CA would (a CRL record is
	// committed with it), and returns once the Builder has dealt with it.
	crl := uint64(0)
	announce := func(bundle []byte) {
		f.trust.set(bundle)
		crl++
		f.write(t, func(tx *store.Tx) error { return tx.PutCRL(store.CRL{Number: crl}) })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if p := f.b.WaitPushed(ctx); !p.Complete {
			t.Fatalf("trust change not dealt with: %+v", p)
		}
	}
	announce(append(append([]byte{}, oldRoot...), newRoot...)) // published
	f.pub.expect(t, "trust")
	announce(append(append([]byte{}, newRoot...), oldRoot...)) // switched: the same two
	f.pub.quiet(t)
	announce(newRoot) // retired
	f.pub.expect(t, "trust")
	f.pub.mu.Lock()
	n := len(f.pub.trusts)
	f.pub.mu.Unlock()
	if n != 3 {
		t.Fatalf("trust handed over %d times, want 3 (sync, new root, old root gone)", n)
	}
}
