package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

func putIdentity(name string) func(*store.Tx) error {
	return audited("identity.add", func(tx *store.Tx) error {
		return tx.PutIdentity(store.Identity{Name: name, State: store.StateActive})
	})
}

func next(t *testing.T, sub *store.Subscription) store.Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := sub.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return b
}

// TestFeedOrder checks that concurrent writers' changes arrive in commit
// order: each writer's own changes in the order it made them, Seq growing
// from batch to batch and ending at the last audit Seq.
func TestFeedOrder(t *testing.T) {
	s, _ := newStore(t)
	sub := s.Subscribe(0)
	defer sub.Close()
	const writers, each = 4, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.Update(ctx, putIdentity(fmt.Sprintf("w%d-%03d", w, i))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var order []string
	var seq uint64
	batches := 0
	for len(order) < writers*each {
		b := next(t, sub)
		batches++
		if b.Seq <= seq {
			t.Fatalf("batch %d has Seq %d after %d", batches, b.Seq, seq)
		}
		if b.Resync {
			t.Fatal("resync with the default limit")
		}
		seq = b.Seq
		for _, c := range b.Changes {
			if c.Kind != store.KindIdentity {
				t.Fatalf("unexpected change %+v", c)
			}
			order = append(order, c.Key)
		}
	}
	wg.Wait()
	for w := range writers {
		var mine []string
		for _, k := range order {
			if k[:3] == fmt.Sprintf("w%d-", w) {
				mine = append(mine, k)
			}
		}
		if len(mine) != each || !slices.IsSorted(mine) {
			t.Fatalf("writer %d: changes arrived as %v", w, mine)
		}
	}
	var last uint64
	view(t, s, func(tx *store.Tx) error { last = tx.LastSeq(); return nil })
	if seq != last {
		t.Fatalf("last batch Seq %d, store's last Seq %d", seq, last)
	}
	t.Logf("%d changes from %d writers in %d batches", len(order), writers, batches)
}

// TestFeedCoalesces checks that a record changed ten times while the
// consumer is busy is named once, in the place of its first change, and
// that audit-only updates queue nothing but advance Seq.
func TestFeedCoalesces(t *testing.T) {
	s, _ := newStore(t)
	sub := s.Subscribe(0)
	defer sub.Close()
	for i := range 10 {
		update(t, s, audited("node.update", func(tx *store.Tx) error {
			return tx.PutNode(store.Node{Name: "a", State: store.StateActive, Renewals: i})
		}))
	}
	update(t, s, putIdentity("b"))
	if _, err := s.Append(ctx, store.Event{Action: "denied", Outcome: store.OutcomeDenied}); err != nil {
		t.Fatal(err)
	}
	update(t, s, audited("node.update", func(tx *store.Tx) error {
		return tx.PutNode(store.Node{Name: "a", State: store.StateActive})
	}))
	b := next(t, sub)
	want := []store.Change{{Kind: store.KindNode, Key: "a"}, {Kind: store.KindIdentity, Key: "b", Identity: "b"}}
	if !slices.Equal(b.Changes, want) || b.Resync || b.Seq != 13 {
		t.Fatalf("got %+v seq=%d resync=%v, want %+v seq=13", b.Changes, b.Seq, b.Resync, want)
	}
	// Nothing more is queued: the next Next waits.
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if b, err := sub.Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Next: %+v, %v; want a timeout", b, err)
	}
}

// TestFeedKinds checks the change each kind of write reports.
func TestFeedKinds(t *testing.T) {
	s, _ := newStore(t)
	sub := s.Subscribe(0)
	defer sub.Close()
	update(t, s, audited("all", func(tx *store.Tx) error {
		if err := tx.PutCA(store.CA{Serial: "ca1", Role: store.RoleRoot}); err != nil {
			return err
		}
		if err := tx.SetCASet(store.CASet{IssuerSerial: "ca1", RootSerials: []string{"ca1"}}); err != nil {
			return err
		}
		if err := tx.InsertIdentity(store.Identity{Name: "web"}); err != nil {
			return err
		}
		if err := putCert(tx, testCert("web", "s1", t0)); err != nil {
			return err
		}
		if err := tx.PutRevocation(store.Revocation{Serial: "s1", Identity: "web"}); err != nil {
			return err
		}
		if err := tx.PutNode(store.Node{Name: "n1"}); err != nil {
			return err
		}
		if err := tx.DeleteNode("n1"); err != nil {
			return err
		}
		if _, err := tx.AppendMesh([]byte("{}"), "op"); err != nil {
			return err
		}
		return tx.PutCRL(store.CRL{Number: 1})
	}))
	b := next(t, sub)
	want := []store.Change{
		{Kind: store.KindCA, Key: "ca1"}, {Kind: store.KindCA},
		{Kind: store.KindIdentity, Key: "web", Identity: "web"},
		{Kind: store.KindCert, Key: "s1", Identity: "web"},
		{Kind: store.KindRevocation, Key: "s1", Identity: "web"},
		{Kind: store.KindNode, Key: "n1"},
		{Kind: store.KindMesh, Key: "1"},
		{Kind: store.KindCRL},
	}
	if !slices.Equal(b.Changes, want) || b.Seq != 1 {
		t.Fatalf("got %+v seq=%d\nwant %+v seq=1", b.Changes, b.Seq, want)
	}
}

// TestFeedOverflowResyncs checks that a full queue becomes one Resync that
// keeps the newest Seq, and that the subscription then works as before.
func TestFeedOverflowResyncs(t *testing.T) {
	s, _ := newStore(t)
	sub := s.Subscribe(4)
	defer sub.Close()
	for i := range 10 {
		update(t, s, putIdentity(fmt.Sprintf("id%d", i)))
	}
	b := next(t, sub)
	if !b.Resync || len(b.Changes) != 0 || b.Seq != 10 {
		t.Fatalf("got %+v, want a resync at Seq 10 with no changes", b)
	}
	update(t, s, putIdentity("after"))
	b = next(t, sub)
	if b.Resync || len(b.Changes) != 1 || b.Changes[0].Key != "after" || b.Seq != 11 {
		t.Fatalf("after the resync got %+v", b)
	}
}

// TestFeedNeverBlocksWriter checks that writers finish while a subscriber
// reads nothing, and that the subscriber then learns that it missed
// changes.
func TestFeedNeverBlocksWriter(t *testing.T) {
	s, _ := newStore(t)
	idle := s.Subscribe(8)
	defer idle.Close()
	const writers, each = 8, 40
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if err := s.Update(ctx, putIdentity(fmt.Sprintf("w%d-%d", w, i))); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}()
	start := time.Now()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("writers still blocked after 60s with an idle subscriber")
	}
	t.Logf("%d updates with an idle subscriber in %v", writers*each, time.Since(start).Round(time.Millisecond))
	if b := next(t, idle); !b.Resync || b.Seq != writers*each {
		t.Fatalf("idle subscriber got %+v, want a resync at Seq %d", b, writers*each)
	}
}

// TestFeedClose checks that Next ends on Close and on its context, and
// that a closed subscription queues nothing.
func TestFeedClose(t *testing.T) {
	s, _ := newStore(t)
	sub := s.Subscribe(0)
	errs := make(chan error, 1)
	go func() {
		_, err := sub.Next(context.Background())
		errs <- err
	}()
	sub.Close()
	select {
	case err := <-errs:
		wantErr(t, err, store.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Next did not return after Close")
	}
	update(t, s, putIdentity("late"))
	if _, err := sub.Next(context.Background()); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	other := s.Subscribe(0)
	defer other.Close()
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := other.Next(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next with a cancelled context: %v", err)
	}
}

// TestFeedTake checks that Take returns at once the distinct keys of one
// kind queued so far, leaves nothing behind for the next call, reports a
// dropped queue as a resync, and fails after Close.
func TestFeedTake(t *testing.T) {
	s, _ := newStore(t)
	sub := s.Subscribe(4)
	if keys, resync, err := sub.Take(store.KindIdentity); err != nil || resync || len(keys) != 0 {
		t.Fatalf("nothing queued: %v %v %v", keys, resync, err)
	}
	update(t, s, putIdentity("b"))
	update(t, s, putIdentity("a"))
	update(t, s, putIdentity("b"))
	keys, resync, err := sub.Take(store.KindIdentity)
	if err != nil || resync || !slices.Equal(keys, []string{"a", "b"}) {
		t.Fatalf("got %v %v %v, want [a b]", keys, resync, err)
	}
	if keys, _, _ := sub.Take(store.KindIdentity); len(keys) != 0 {
		t.Fatalf("taken twice: %v", keys)
	}
	if keys, _, _ := sub.Take(store.KindNode); len(keys) != 0 {
		t.Fatalf("identity changes taken as nodes: %v", keys)
	}
	for i := range 10 {
		update(t, s, putIdentity(fmt.Sprintf("id%d", i)))
	}
	if keys, resync, err := sub.Take(store.KindIdentity); err != nil || !resync || len(keys) != 0 {
		t.Fatalf("after overflowing: %v %v %v, want a resync", keys, resync, err)
	}
	sub.Close()
	if _, _, err := sub.Take(store.KindIdentity); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
