package registry

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// cancelOnNow cancels the armed context at its next Now: the first read
// of the registry's clock in SignCSR is inside the transaction that checks
// the node, before anything is signed.
type cancelOnNow struct {
	clock.Clock
	armed atomic.Pointer[context.CancelFunc]
}

func (c *cancelOnNow) Now() time.Time {
	if f := c.armed.Swap(nil); f != nil {
		(*f)()
	}
	return c.Clock.Now()
}

// TestSignCSRAbandonedIsNotSignedNorStored: a CSR whose caller went away
// (an agent whose call timed out sends another) is not signed when the
// caller left before signing, and not stored when it left while the CSR
// was signed or while the commit waited for the store. Nothing of it is
// recorded: no certificate, no holder record, no audit event, no count
// against the node's CSR limit.
func TestSignCSRAbandonedIsNotSignedNorStored(t *testing.T) {
	var armedFault atomic.Pointer[context.CancelFunc]
	st := storeWithFault(t, func() error {
		// Runs at the start of every Update, after its own check of
		// ctx: the caller leaves while the commit waits for the store.
		if f := armedFault.Swap(nil); f != nil {
			(*f)()
		}
		return nil
	})
	clk := &cancelOnNow{Clock: clock.NewFake(t0)}
	r := newRegistryWith(t, Config{Store: st, Clock: clk})
	ctx := context.Background()
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "test"); err != nil {
		t.Fatal(err)
	}
	_, tok, err := r.AddNode(ctx, AddNode{Name: "a1", Identities: []string{"web"}, Agent: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "a1", tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	presented := nodeCertOf(t, r, "a1")
	var signed atomic.Int64
	issue := r.issue
	var afterIssue atomic.Pointer[func()]
	r.issue = func(ctx context.Context, req ca.Request) (*ca.Issued, string, error) {
		signed.Add(1)
		out, serial, err := issue(ctx, req)
		if f := afterIssue.Swap(nil); f != nil {
			(*f)()
		}
		return out, serial, err
	}

	for _, tc := range []struct {
		name       string
		arm        func(cancel context.CancelFunc)
		wantSigned int64
	}{
		{"left before signing", func(cancel context.CancelFunc) { clk.armed.Store(&cancel) }, 0},
		{"left while signing", func(cancel context.CancelFunc) {
			f := func() { cancel() }
			afterIssue.Store(&f)
		}, 1},
		{"left while the commit waited", func(cancel context.CancelFunc) {
			f := func() { armedFault.Store(&cancel) }
			afterIssue.Store(&f)
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshotAgentRecords(t, r, st)
			signed.Store(0)
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			tc.arm(cancel)
			_, err := r.SignCSR(cctx, "a1", presented, "web", csr(t))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("SignCSR of an abandoned CSR: %v, want context.Canceled", err)
			}
			if got := signed.Load(); got != tc.wantSigned {
				t.Fatalf("the CA signed %d certificates, want %d", got, tc.wantSigned)
			}
			if after := snapshotAgentRecords(t, r, st); after != before {
				t.Fatalf("an abandoned CSR changed the store: before %+v, after %+v", before, after)
			}
		})
	}

	// The same CSR from a caller that stays is signed and stored: the
	// cases above failed for their callers' leaving, nothing else.
	before := snapshotAgentRecords(t, r, st)
	s, err := r.SignCSR(ctx, "a1", presented, "web", csr(t))
	if err != nil {
		t.Fatal(err)
	}
	after := snapshotAgentRecords(t, r, st)
	if after.certs != before.certs+1 || after.holder != s.Serial || after.signs != before.signs+1 || after.events != before.events+1 {
		t.Fatalf("a CSR whose caller waited: before %+v, after %+v (serial %s)", before, after, s.Serial)
	}
	t.Logf("abandoned CSRs: 0 of 3 stored (1 never signed); the control CSR stored as %s", s.Serial)
}

// agentRecords is what a CSR of a1 for web records.
type agentRecords struct {
	certs  int
	holder string // serial of a1's current certificate for web
	signs  int
	events int // ActionAgentSign events
}

func snapshotAgentRecords(t *testing.T, r *Registry, st *store.Store) agentRecords {
	t.Helper()
	var out agentRecords
	out.certs = certCount(t, st, "web")
	if err := st.View(context.Background(), func(tx *store.Tx) error {
		if h, err := tx.HolderCert("web", "a1"); err == nil {
			out.holder = h.Serial
		}
		c, err := tx.SignCount("a1")
		out.signs = c.Signs
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, e := range events(t, r) {
		if e.Action == ActionAgentSign {
			out.events++
		}
	}
	return out
}

func storeWithFault(t *testing.T, fault func() error) *store.Store {
	t.Helper()
	return testkit.OpenStore(t, dataDir(t), store.Config{Fault: fault})
}
