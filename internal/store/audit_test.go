package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

func TestAuditConcurrentGapless(t *testing.T) {
	s, _ := newStore(t)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("node-%02d", i)
			errs <- s.Update(ctx, func(tx *store.Tx) error {
				if err := tx.PutNode(store.Node{Name: name, State: store.StateActive}); err != nil {
					return err
				}
				_, err := tx.Append(store.Event{Action: "node.create", Node: name})
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	view(t, s, func(tx *store.Tx) error {
		if got := tx.LastSeq(); got != n {
			t.Errorf("LastSeq() = %d, want %d", got, n)
		}
		evs, err := tx.Events(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != n {
			t.Fatalf("Events(0, 0) returned %d events, want %d", len(evs), n)
		}
		seen := map[string]bool{}
		for i, ev := range evs {
			if ev.Seq != uint64(i+1) {
				t.Errorf("event %d has Seq %d", i, ev.Seq)
			}
			if ev.Outcome != store.OutcomeOK || !ev.Time.Equal(t0) {
				t.Errorf("event %d: Outcome %q Time %v, want defaults %q %v", i, ev.Outcome, ev.Time, store.OutcomeOK, t0)
			}
			if _, err := tx.Node(ev.Node); err != nil {
				t.Errorf("event %d names node %q: %v", ev.Seq, ev.Node, err)
			}
			seen[ev.Node] = true
		}
		if len(seen) != n {
			t.Errorf("events name %d distinct nodes, want %d", len(seen), n)
		}
		return nil
	})
	check(t, s)
}

func TestEventsPaging(t *testing.T) {
	s, _ := newStore(t)
	explicit := t0.Add(-time.Hour)
	for i := range 10 {
		ev := store.Event{Action: "test", Detail: fmt.Sprint(i + 1)}
		if i == 0 {
			ev.Time, ev.Outcome, ev.Seq = explicit, store.OutcomeDenied, 99
		}
		got, err := s.Append(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		if got.Seq != uint64(i+1) {
			t.Fatalf("Append #%d returned Seq %d", i+1, got.Seq)
		}
	}
	tests := []struct {
		name  string
		after uint64
		limit int
		want  []uint64
	}{
		{"all", 0, 0, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"first page", 0, 3, []uint64{1, 2, 3}},
		{"middle page", 3, 3, []uint64{4, 5, 6}},
		{"last partial page", 8, 3, []uint64{9, 10}},
		{"negative limit means all", 7, -1, []uint64{8, 9, 10}},
		{"past the end", 10, 3, nil},
		{"max seq", ^uint64(0), 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			view(t, s, func(tx *store.Tx) error {
				evs, err := tx.Events(tc.after, tc.limit)
				if err != nil {
					t.Fatal(err)
				}
				var got []uint64
				for _, ev := range evs {
					got = append(got, ev.Seq)
					if ev.Detail != fmt.Sprint(ev.Seq) {
						t.Errorf("event %d has detail %q", ev.Seq, ev.Detail)
					}
				}
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("Events(%d, %d) = %v, want %v", tc.after, tc.limit, got, tc.want)
				}
				return nil
			})
		})
	}
	view(t, s, func(tx *store.Tx) error {
		evs, err := tx.Events(0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if ev := evs[0]; !ev.Time.Equal(explicit) || ev.Outcome != store.OutcomeDenied {
			t.Errorf("caller's Time/Outcome not kept: %+v", ev)
		}
		return nil
	})
	check(t, s)
}

func TestUpdateWithoutAuditWritesNothing(t *testing.T) {
	s, _ := newStore(t)
	writes := []struct {
		name string
		fn   func(*store.Tx) error
	}{
		{"InsertIdentity", func(tx *store.Tx) error { return tx.InsertIdentity(store.Identity{Name: "web"}) }},
		{"PutIdentity", func(tx *store.Tx) error { return tx.PutIdentity(store.Identity{Name: "web"}) }},
		{"PutCert", func(tx *store.Tx) error { return putCert(tx, testCert("web", "01", t0)) }},
		{"PutCA", func(tx *store.Tx) error { return tx.PutCA(store.CA{Serial: "c1"}) }},
		{"PutNode", func(tx *store.Tx) error { return tx.PutNode(store.Node{Name: "n"}) }},
		{"DeleteNode", func(tx *store.Tx) error { return tx.DeleteNode("keep") }},
		{"PutRevocation", func(tx *store.Tx) error { return tx.PutRevocation(store.Revocation{Serial: "01"}) }},
		{"AppendMesh", func(tx *store.Tx) error { _, err := tx.AppendMesh([]byte("doc"), "x"); return err }},
	}
	update(t, s, audited("node.create", func(tx *store.Tx) error { return tx.PutNode(store.Node{Name: "keep"}) }))
	for _, tc := range writes {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, s.Update(ctx, tc.fn), store.ErrNoAudit)
		})
	}

	// An error from fn is returned as is, and its writes are rolled back
	// even though it appended an event.
	boom := errors.New("boom")
	err := s.Update(ctx, audited("x", func(tx *store.Tx) error {
		if err := tx.PutNode(store.Node{Name: "n"}); err != nil {
			return err
		}
		return boom
	}))
	wantErr(t, err, boom)

	// Reads alone need no audit.
	update(t, s, func(tx *store.Tx) error { _, err := tx.Nodes(); return err })

	view(t, s, func(tx *store.Tx) error {
		if got := tx.LastSeq(); got != 1 {
			t.Errorf("LastSeq() = %d, want 1", got)
		}
		nodes, err := tx.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 1 || nodes[0].Name != "keep" {
			t.Errorf("Nodes() = %+v, want only keep", nodes)
		}
		ids, err := tx.Identities()
		if err != nil || len(ids) != 0 {
			t.Errorf("Identities() = %v, %v; want none", ids, err)
		}
		if _, err := tx.Cert("01"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Cert(01): %v, want ErrNotFound", err)
		}
		if _, err := tx.CA("c1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("CA(c1): %v, want ErrNotFound", err)
		}
		if _, err := tx.Revocation("01"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Revocation(01): %v, want ErrNotFound", err)
		}
		if _, err := tx.LatestMesh(); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("LatestMesh(): %v, want ErrNotFound", err)
		}
		return nil
	})
	check(t, s)
}

func TestViewIsReadOnly(t *testing.T) {
	s, _ := newStore(t)
	tests := []struct {
		name string
		fn   func(*store.Tx) error
	}{
		{"Append", func(tx *store.Tx) error { _, err := tx.Append(store.Event{Action: "x"}); return err }},
		{"InsertIdentity", func(tx *store.Tx) error { return tx.InsertIdentity(store.Identity{Name: "web"}) }},
		{"PutIdentity", func(tx *store.Tx) error { return tx.PutIdentity(store.Identity{Name: "web"}) }},
		{"PutCert", func(tx *store.Tx) error { return putCert(tx, testCert("web", "01", t0)) }},
		{"PutCA", func(tx *store.Tx) error { return tx.PutCA(store.CA{Serial: "c1"}) }},
		{"SetCASet", func(tx *store.Tx) error { return tx.SetCASet(store.CASet{IssuerSerial: "c1"}) }},
		{"PutNode", func(tx *store.Tx) error { return tx.PutNode(store.Node{Name: "n"}) }},
		{"DeleteNode", func(tx *store.Tx) error { return tx.DeleteNode("n") }},
		{"PutRevocation", func(tx *store.Tx) error { return tx.PutRevocation(store.Revocation{Serial: "01"}) }},
		{"AppendMesh", func(tx *store.Tx) error { _, err := tx.AppendMesh(nil, "x"); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, s.View(ctx, tc.fn), store.ErrReadOnly)
		})
	}
}

func TestContextCheckedFirst(t *testing.T) {
	s, _ := newStore(t)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	ran := false
	fn := func(*store.Tx) error { ran = true; return nil }
	wantErr(t, s.Update(cancelled, fn), context.Canceled)
	wantErr(t, s.View(cancelled, fn), context.Canceled)
	if _, err := s.Append(cancelled, store.Event{Action: "x"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append: %v, want context.Canceled", err)
	}
	if ran {
		t.Error("fn ran with a cancelled context")
	}
}

func TestGroupCommit(t *testing.T) {
	s, _ := newStore(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := testCert(fmt.Sprintf("id-%d", i%7), fmt.Sprintf("%04x", i), t0.Add(time.Duration(i)*time.Second))
			errs <- s.Update(ctx, func(tx *store.Tx) error {
				if err := putCert(tx, c); err != nil {
					return err
				}
				_, err := tx.Append(store.Event{Action: "cert.issue", Identity: c.Identity, Serial: c.Serial})
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	view(t, s, func(tx *store.Tx) error {
		for i := range n {
			if _, err := tx.Cert(fmt.Sprintf("%04x", i)); err != nil {
				t.Errorf("cert %04x: %v", i, err)
			}
		}
		if got := tx.LastSeq(); got != n {
			t.Errorf("LastSeq() = %d, want %d", got, n)
		}
		return nil
	})
	check(t, s)
}
