package registry

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// TestAgentIdentitiesCarrySelectors: an agent node learns each active
// identity with its selectors, as stored (and survives a reopened store);
// revoked identities and nodes without an agent get nothing.
func TestAgentIdentitiesCarrySelectors(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	r := newRegistry(t, st, clock.NewFake(t0))
	for _, name := range []string{"web", "db", "old"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: name}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.AddNode(ctx, AddNode{Name: "a1", Identities: []string{"db", "old"}, Agent: true}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.AddNode(ctx, AddNode{Name: "plain", Identities: []string{"db"}}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AssignIdentity(ctx, Assignment{Node: "a1", Identity: "web", Selectors: []string{"uid:1000", "path:/usr/bin/echo"}}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RevokeIdentity(ctx, "old", "test", "test"); err != nil {
		t.Fatal(err)
	}
	got, err := r.AgentIdentities(ctx, "a1")
	if err != nil {
		t.Fatal(err)
	}
	want := []AssignedIdentity{
		{Name: "db", SPIFFEID: "spiffe://mesh.local/db"},
		{Name: "web", SPIFFEID: "spiffe://mesh.local/web", Selectors: []string{"path:/usr/bin/echo", "uid:1000"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("AgentIdentities = %+v, want %+v", got, want)
	}
	if _, err := r.AgentIdentities(ctx, "plain"); !errors.Is(err, ErrDenied) {
		t.Fatalf("node without an agent: err = %v, want ErrDenied", err)
	}
	if _, err := r.AgentIdentities(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown node: err = %v, want ErrNotFound", err)
	}
	// The assignment is audited with its selectors.
	var found bool
	if err := st.View(ctx, func(tx *store.Tx) error {
		evs, err := tx.Events(0, 0)
		for _, e := range evs {
			found = found || (e.Action == ActionNodeAssign && e.Identity == "web" && e.Detail == "selectors=[path:/usr/bin/echo uid:1000]")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal("no audit record of the assignment with its selectors")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	r = newRegistry(t, openStore(t, dir), clock.NewFake(t0))
	if got, err := r.AgentIdentities(ctx, "a1"); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopening the store: %+v, %v", got, err)
	}
}
