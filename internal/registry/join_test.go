package registry

import (
	"context"
	"testing"
)

// joinNode registers a node holding ids and joins it: it then has a node
// certificate from the current issuer.
func joinNode(t *testing.T, r *Registry, name string, ids ...string) {
	t.Helper()
	ctx := context.Background()
	_, tok, err := r.AddNode(ctx, AddNode{Name: name, Identities: ids}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, name, tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
}
