package store_test

import (
	"reflect"
	"testing"

	"github.com/meshca/meshca/internal/store"
)

// TestContractNodeSelectors: a node's selectors per identity read back as
// written on every backend.
func TestContractNodeSelectors(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		n := store.Node{Name: "a1", Kind: "sidecar", Identities: []string{"db", "web"}, State: store.StateActive, Agent: true,
			Selectors: map[string][]string{"web": {"path:/usr/bin/echo", "uid:1000"}}, CreatedAt: t0, UpdatedAt: t0}
		update(t, s, audited("node.add", func(tx *store.Tx) error { return tx.PutNode(n) }))
		view(t, s, func(tx *store.Tx) error {
			got, err := tx.Node("a1")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, n) {
				t.Errorf("Node(a1) = %+v, want %+v", got, n)
			}
			return nil
		})
	})
}
