package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/mesh"
)

func TestNodeTokensAreStoredHashedAndSingleUse(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "echo"}, "test"); err != nil {
		t.Fatal(err)
	}
	feed := watchFeed(t, st)

	n, tok, err := r.AddNode(ctx, AddNode{Name: "n1", Identities: []string{"echo"}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if n.Kind != mesh.KindSidecar || !tok.Expires.Equal(t0.Add(authority.Default().JoinToken)) || !n.JoinedAt.IsZero() {
		t.Fatalf("node = %+v, token expires %s", n, tok.Expires)
	}
	if nodes, _, _ := feed.drain(); !slices.Equal(nodes, []string{"n1"}) {
		t.Fatalf("the feed names nodes %v, want [n1]", nodes)
	}
	// Only the hash is stored, in the node's join token record.
	var stored store.JoinToken
	st.View(ctx, func(tx *store.Tx) (err error) { stored, err = tx.JoinToken("n1"); return err })
	if !bytes.Equal(stored.Hash, tokenHash(tok.Token)) || !stored.Expires.Equal(tok.Expires) {
		t.Fatal("stored token hash does not match")
	}
	path := st.Path()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, []byte(tok.Token)) {
		t.Fatal("the join token is in the db file in the clear")
	}
	st = openStore(t, filepath.Dir(path))
	defer st.Close()
	r = newRegistry(t, st, clk)

	if _, err := r.Join(ctx, "n1", tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "n1", tok.Token, csr(t), "test"); !errors.Is(err, ErrToken) {
		t.Fatalf("second use: %v", err)
	}
	tok2, err := r.NewJoinToken(ctx, "n1", "test")
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(authority.Default().JoinToken)
	if _, err := r.Join(ctx, "n1", tok2.Token, csr(t), "test"); !errors.Is(err, ErrToken) {
		t.Fatalf("expired token: %v", err)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReissueNotifiesHoldersOnly(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	for _, id := range []string{"echo", "db"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: id}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	for node, ids := range map[string][]string{"n1": {"echo"}, "n2": {"db"}, "n3": {"echo", "db"}} {
		if _, _, err := r.AddNode(ctx, AddNode{Name: node, Identities: ids}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	feed := watchFeed(t, st)
	before, _ := r.Identity(ctx, "echo")
	after, err := r.ReissueIdentity(ctx, "echo", "test")
	if err != nil {
		t.Fatal(err)
	}
	if after.Cert.Serial == before.Cert.Serial || after.Identity.CurrentSerial != after.Cert.Serial {
		t.Fatal("current serial not replaced")
	}
	// The feed names the identity; its holders are read from the store by
	// whoever follows the feed (internal/nodeconfig).
	if nodes, ids, _ := feed.drain(); len(nodes) != 0 || !slices.Equal(ids, []string{"echo"}) {
		t.Fatalf("the feed names nodes %v and identities %v, want only echo", nodes, ids)
	}
	_, creds, err := r.NodeCredentials(ctx, "n3")
	if err != nil || len(creds) != 2 {
		t.Fatalf("n3 credentials: %d, %v", len(creds), err)
	}
	for _, c := range creds {
		if c.Identity == "echo" && c.Serial != after.Cert.Serial {
			t.Fatal("n3 still gets the old echo certificate")
		}
	}
	// Unassign removes the credential.
	if _, err := r.Unassign(ctx, "n3", "echo", "test"); err != nil {
		t.Fatal(err)
	}
	_, creds, _ = r.NodeCredentials(ctx, "n3")
	if len(creds) != 1 || creds[0].Identity != "db" {
		t.Fatalf("after unassign: %+v", creds)
	}
	// The holders index follows assignments made after it was read.
	if _, err := r.Assign(ctx, "n2", "echo", "test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.AddNode(ctx, AddNode{Name: "n4", Identities: []string{"echo"}}, "test"); err != nil {
		t.Fatal(err)
	}
	if nodes, _, _ := feed.drain(); !slices.Equal(nodes, []string{"n2", "n3", "n4"}) {
		t.Fatalf("after assign, unassign and add the feed names nodes %v, want [n2 n3 n4]", nodes)
	}
	if _, err := r.ReissueIdentity(ctx, "echo", "test"); err != nil {
		t.Fatal(err)
	}
	if nodes, ids, _ := feed.drain(); len(nodes) != 0 || !slices.Equal(ids, []string{"echo"}) {
		t.Fatalf("reissue: the feed names nodes %v and identities %v, want only echo", nodes, ids)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestReissueAll re-keys every active identity, skips revoked ones, pushes
// each new secret to its holders and audits the run.
func TestReissueAll(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	var names []string
	for i := 0; i < 30; i++ {
		names = append(names, fmt.Sprintf("id-%d", i))
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: names[i]}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.AddNode(ctx, AddNode{Name: "n1", Identities: names[:3]}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RevokeIdentity(ctx, "id-29", "test", "test"); err != nil {
		t.Fatal(err)
	}
	before := map[string]string{}
	for _, n := range names {
		s, _ := r.Identity(ctx, n)
		if s.Cert != nil {
			before[n] = s.Cert.Serial
		}
	}
	feed := watchFeed(t, st)
	var calls atomic.Int64
	sum, err := r.ReissueAll(ctx, "test", func(p ReissueProgress) {
		calls.Add(1)
		if p.Total != 29 || p.Reissued+p.Failed > p.Total {
			t.Errorf("progress %+v", p)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Total != 29 || sum.Reissued != 29 || sum.Failed != 0 || calls.Load() != 29 {
		t.Fatalf("summary %+v after %d progress calls, want 29 re-keyed", sum, calls.Load())
	}
	for _, n := range names[:29] {
		s, _ := r.Identity(ctx, n)
		if s.Cert == nil || s.Cert.Serial == before[n] {
			t.Errorf("%s not re-keyed", n)
		}
	}
	if _, ids, _ := feed.drain(); len(ids) != 29 {
		t.Errorf("the feed names %d identities, want the 29 re-keyed", len(ids))
	}
	events, err := r.Audit(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	last := events[len(events)-1]
	if last.Action != ActionReissueAll || !strings.Contains(last.Detail, "reissued=29 failed=0") {
		t.Errorf("last audit record %+v", last)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// goneAfterCommit is a caller's context that ends the moment the store
// commits a change (armed only while the operation under test runs): the
// caller went away just after the commit.
type goneAfterCommit struct {
	context.Context
	armed, gone *atomic.Bool
}

func (c goneAfterCommit) Err() error {
	if c.gone.Load() {
		return context.Canceled
	}
	return nil
}

// TestPushAfterCommitOutlivesTheCaller: once a revocation or a reissue is
// committed, the change feed names it even if the caller's context ends
// right after the commit: nothing after the commit depends on the caller.
func TestPushAfterCommitOutlivesTheCaller(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	sealer, err := seal.LoadOrCreate(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	var armed, gone atomic.Bool
	st, err := store.Open(store.Config{Dir: dir, Sealer: sealer, OnCommit: func([]store.Event, time.Duration) {
		if armed.Load() {
			gone.Store(true)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := newRegistry(t, st, clock.NewFake(t0))
	for _, id := range []string{"echo", "db"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: id}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	feed := watchFeed(t, st)
	for _, tt := range []struct {
		name, ident string
		op          func(ctx context.Context) error
	}{
		{"reissue", "db", func(ctx context.Context) error { _, err := r.ReissueIdentity(ctx, "db", "test"); return err }},
		{"revoke", "echo", func(ctx context.Context) error { _, err := r.RevokeIdentity(ctx, "echo", "test", "test"); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A node change since the index was last read: the push needs a
			// store read after the commit.
			if _, _, err := r.AddNode(ctx, AddNode{Name: "n-" + tt.name, Identities: []string{"echo", "db"}}, "test"); err != nil {
				t.Fatal(err)
			}
			feed.drain()
			armed.Store(true)
			err := tt.op(goneAfterCommit{Context: ctx, armed: &armed, gone: &gone})
			armed.Store(false)
			gone.Store(false)
			if err != nil {
				t.Fatal(err)
			}
			if _, ids, _ := feed.drain(); !slices.Equal(ids, []string{tt.ident}) {
				t.Fatalf("the feed names identities %v, want [%s]", ids, tt.ident)
			}
		})
	}
}

// TestReissueOfAnIdentityRevokedMeanwhile: a revocation that commits while
// the new certificate is being signed wins; nothing is recorded.
func TestReissueOfAnIdentityRevokedMeanwhile(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	before, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	issue := r.issue
	r.issue = func(ctx context.Context, req ca.Request) (*ca.Issued, string, error) {
		if _, err := r.RevokeIdentity(ctx, "web", "test", "test"); err != nil {
			t.Fatal(err)
		}
		return issue(ctx, req)
	}
	if _, err := r.ReissueIdentity(ctx, "web", "test"); !errors.Is(err, ErrDenied) {
		t.Fatalf("err = %v, want ErrDenied", err)
	}
	after, _ := r.Identity(ctx, "web")
	if after.Identity.CurrentSerial != before.Cert.Serial {
		t.Fatalf("a certificate was recorded for a revoked identity: %s", after.Identity.CurrentSerial)
	}
}

// TestReissueAllOneAtATime: a second run while one is going is refused.
func TestReissueAllOneAtATime(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "test"); err != nil {
		t.Fatal(err)
	}
	var second error
	if _, err := r.ReissueAll(ctx, "test", func(ReissueProgress) { _, second = r.ReissueAll(ctx, "test", nil) }); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(second, ErrExists) {
		t.Fatalf("second run: %v, want ErrExists", second)
	}
	if _, err := r.ReissueAll(ctx, "test", nil); err != nil {
		t.Fatalf("a run after the first ended: %v", err)
	}
}
