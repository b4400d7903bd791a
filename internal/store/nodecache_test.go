package store_test

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// TestNodeReadsAreIndependentCopies: a node's record read again unchanged
// (served decoded from the store's cache) equals the stored one; changing
// what one read returned changes neither the store nor the next read; a
// rewrite is read at once, inside its own transaction and after it, and
// a deletion too.
func TestNodeReadsAreIndependentCopies(t *testing.T) {
	s, _ := newStore(t)
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("svc-%03d", i)
	}
	at := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	want := store.Node{Name: "a1", Kind: "sidecar", Identities: ids, State: store.StateActive, Agent: true,
		CreatedAt: at, UpdatedAt: at, CertSerial: "0a", Selectors: map[string][]string{"svc-001": {"uid:1000"}}}
	update(t, s, audited("node.add", func(tx *store.Tx) error { return tx.PutNode(want) }))

	read := func() store.Node {
		t.Helper()
		var n store.Node
		view(t, s, func(tx *store.Tx) error {
			var err error
			n, err = tx.Node("a1")
			return err
		})
		return n
	}
	for i := range 3 {
		got := read()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("read %d: %+v, want %+v", i, got, want)
		}
		// A caller editing its copy, as an assignment does.
		got.Identities[0] = "changed"
		got.Identities = append(got.Identities[:1], "appended")
		got.Selectors["svc-001"][0] = "uid:0"
		got.Selectors["svc-002"] = []string{"gid:0"}
	}

	// Rewritten: the new record inside the writing transaction and after.
	next := want
	next.Identities = slices.Clone(ids[:50])
	next.Selectors = nil
	update(t, s, audited("node.unassign", func(tx *store.Tx) error {
		if _, err := tx.Node("a1"); err != nil { // cached as it was
			return err
		}
		if err := tx.PutNode(next); err != nil {
			return err
		}
		n, err := tx.Node("a1")
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(n, next) {
			t.Errorf("inside the rewrite: %+v, want %+v", n, next)
		}
		return nil
	}))
	if got := read(); !reflect.DeepEqual(got, next) {
		t.Fatalf("after the rewrite: %+v, want %+v", got, next)
	}
	update(t, s, audited("node.delete", func(tx *store.Tx) error { return tx.DeleteNode("a1") }))
	view(t, s, func(tx *store.Tx) error {
		if _, err := tx.Node("a1"); err != store.ErrNotFound {
			t.Errorf("deleted node read: %v, want ErrNotFound", err)
		}
		return nil
	})
	check(t, s)
	t.Logf("a node of %d identities read 3 times, its copies edited in between: every read equal to the stored record; a rewrite and a deletion read at once", len(ids))
}
