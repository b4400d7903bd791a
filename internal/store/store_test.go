package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
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

// TestGroupCommitKeepsFailuresApart runs many Updates at once, some of which
// write and then fail: each failing one gets its own error and leaves
// nothing behind, every other one is committed, and the audit log stays
// gapless.
func TestGroupCommitKeepsFailuresApart(t *testing.T) {
	s, _ := newStore(t)
	errBoom := errors.New("boom")
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Update(context.Background(), func(tx *store.Tx) error {
				id := store.Identity{Name: fmt.Sprintf("id-%d", i), SPIFFEID: fmt.Sprintf("spiffe://mesh.local/id-%d", i), State: store.StateActive}
				if err := tx.InsertIdentity(id); err != nil {
					return err
				}
				if _, err := tx.Append(store.Event{Action: "test", Actor: "test", Identity: id.Name}); err != nil {
					return err
				}
				if i%7 == 0 {
					return errBoom
				}
				return nil
			})
		}()
	}
	wg.Wait()
	if err := s.View(context.Background(), func(tx *store.Tx) error {
		for i := 0; i < n; i++ {
			_, err := tx.Identity(fmt.Sprintf("id-%d", i))
			switch {
			case i%7 == 0 && !errors.Is(errs[i], errBoom):
				t.Errorf("update %d: err = %v, want its own error", i, errs[i])
			case i%7 == 0 && !errors.Is(err, store.ErrNotFound):
				t.Errorf("failed update %d left its identity behind", i)
			case i%7 != 0 && (errs[i] != nil || err != nil):
				t.Errorf("update %d: %v; identity: %v", i, errs[i], err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestGroupCommitPanicStaysWithItsCaller: a function that panics inside a
// shared transaction panics again in its own caller's goroutine, where it
// can be recovered; the others commit.
func TestGroupCommitPanicStaysWithItsCaller(t *testing.T) {
	s, _ := newStore(t)
	var wg sync.WaitGroup
	recovered := make(chan any, 1)
	errs := make([]error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 7 {
				defer func() { recovered <- recover() }()
			}
			errs[i] = s.Update(context.Background(), func(tx *store.Tx) error {
				if i == 7 {
					panic("boom")
				}
				_, err := tx.Append(store.Event{Action: "test", Actor: "test", Detail: fmt.Sprint(i)})
				return err
			})
		}()
	}
	wg.Wait()
	if got := <-recovered; got != "boom" {
		t.Fatalf("caller recovered %v, want its own panic", got)
	}
	for i, err := range errs {
		if i != 7 && err != nil {
			t.Errorf("update %d: %v", i, err)
		}
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}
