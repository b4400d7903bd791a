package registry

import (
	"context"
	"strings"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// TestRevokeNodeRekeysAnIdentityAssignedMeanwhile: node revoke issues the
// re-keys of the node's identities before its transaction. An identity
// assigned to the node while they are issued (its key may have reached the
// node, still active then) is re-keyed too, and its old certificate goes on
// the CRL.
func TestRevokeNodeRekeysAnIdentityAssignedMeanwhile(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	for _, n := range []string{"a", "b"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: n}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	joinNode(t, r, "n1", "a")
	before, err := r.Identity(ctx, "b")
	if err != nil || before.Cert == nil {
		t.Fatalf("identity b: %+v %v", before, err)
	}
	issue := r.issue
	assigned := false
	r.issue = func(ctx context.Context, req ca.Request) (*ca.Issued, string, error) {
		if !assigned && strings.HasSuffix(req.ID.String(), "/a") {
			assigned = true
			if _, err := r.Assign(ctx, "n1", "b", "test"); err != nil {
				t.Errorf("assign b meanwhile: %v", err)
			}
		}
		return issue(ctx, req)
	}
	if _, err := r.RevokeNode(ctx, "n1", "stolen", "test"); err != nil {
		t.Fatal(err)
	}
	if !assigned {
		t.Fatal("the revocation issued no re-key for identity a")
	}
	after, err := r.Identity(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	var onCRL bool
	_ = st.View(ctx, func(tx *store.Tx) error { _, err := tx.Revocation(before.Cert.Serial); onCRL = err == nil; return nil })
	t.Logf("identity b assigned while the revocation issued its re-keys: serial %s -> %s, old certificate on the CRL: %t", before.Cert.Serial, after.Cert.Serial, onCRL)
	if after.Cert.Serial == before.Cert.Serial || !onCRL {
		t.Errorf("identity b, which the revoked node may hold, was not re-keyed")
	}
}
