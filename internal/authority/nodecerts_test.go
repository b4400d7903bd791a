package authority_test

import (
	"context"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// TestOldNodeCertsCountedFromEitherRecord: a rotation counts the nodes
// still holding a node certificate from the leaving CA the same way
// whether the node record names its newest certificate (recorded since the
// fields exist) or not (recorded before: the certificates are read), and
// stops counting a node once it renewed under the new CA.
func TestOldNodeCertsCountedFromEitherRecord(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	addIdentities(t, r, 1, time.Hour)
	joinNode(t, r, "n1", "svc-000")
	joinNode(t, r, "n2", "svc-000")
	// n2 as a record written before the newest-certificate fields.
	if err := st.Update(ctx, func(tx *store.Tx) error {
		n, err := tx.Node("n2")
		if err != nil {
			return err
		}
		if n.NewestIssuer == "" || n.NewestNotAfter.IsZero() {
			t.Errorf("a joined node's record does not name its newest certificate: %+v", n)
		}
		n.NewestIssuer, n.NewestNotAfter = "", time.Time{}
		if err := tx.PutNode(n); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: "test.rewrite", Actor: "test", Node: "n2"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	r.AdvanceRotation(ctx, acks(0, 2)) // switch
	r.rekey(t)
	r.AdvanceRotation(ctx, acks(0, 2)) // leaves re-keyed; wait for node certificates
	rot := r.RotationStatus()
	if rot == nil || rot.Phase != store.PhaseReissuing || rot.OldNodeCerts != 2 {
		t.Fatalf("status %+v, want phase %s with 2 old node certificates", rot, store.PhaseReissuing)
	}
	for _, node := range []string{"n1", "n2"} {
		if _, err := r.RenewNode(ctx, node, nodeCertOf(t, r, node), csr(t)); err != nil {
			t.Fatal(err)
		}
		r.AdvanceRotation(ctx, acks(0, 2))
		rot = r.RotationStatus()
		if node == "n1" && (rot == nil || rot.OldNodeCerts != 1) {
			t.Fatalf("after n1 renewed: status %+v, want 1 old node certificate", rot)
		}
	}
	if rot != nil {
		t.Fatalf("after both renewed the rotation is still on: %+v", rot)
	}
}
