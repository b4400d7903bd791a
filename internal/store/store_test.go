package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/meshca/meshca/internal/store"
)

// TestNodesVersion checks that NodesVersion moves after a committed node
// write or delete, and only then.
func TestNodesVersion(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	v0 := s.NodesVersion()
	write := func(fn func(tx *store.Tx) error) {
		t.Helper()
		if err := s.Update(ctx, func(tx *store.Tx) error {
			if err := fn(tx); err != nil {
				return err
			}
			_, err := tx.Append(store.Event{Action: "test", Actor: "test"})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	write(func(tx *store.Tx) error { return nil })
	if s.NodesVersion() != v0 {
		t.Fatal("moved without a node write")
	}
	write(func(tx *store.Tx) error {
		return tx.PutNode(store.Node{Name: "n1", Kind: "sidecar", State: store.StateActive})
	})
	v1 := s.NodesVersion()
	if v1 == v0 {
		t.Fatal("did not move after PutNode")
	}
	// A failed transaction writes nothing and must not move it.
	_ = s.Update(ctx, func(tx *store.Tx) error {
		if err := tx.PutNode(store.Node{Name: "n2", Kind: "sidecar", State: store.StateActive}); err != nil {
			return err
		}
		return errors.New("abort")
	})
	if s.NodesVersion() != v1 {
		t.Fatal("moved after an aborted transaction")
	}
	write(func(tx *store.Tx) error { return tx.DeleteNode("n1") })
	if s.NodesVersion() == v1 {
		t.Fatal("did not move after DeleteNode")
	}
}
