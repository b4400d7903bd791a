package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// electTTL is the lease of the tests' terms: etcd's smallest (a member
// raises shorter ones to 2s).
const electTTL = 2 * time.Second

// TestFencedWriteOfDeposedLeader: replica A leads, then is cut off from
// etcd for longer than its lease (a pause, a partition), and B is elected
// meanwhile. When A comes back, a write it makes with its old term's fence
// fails with ErrNotLeader and leaves nothing behind, although A's client
// works again; B's fenced writes land, and so do A's unfenced ones (work
// any replica does).
func TestFencedWriteOfDeposedLeader(t *testing.T) {
	a, b, p := cutReader(t)
	// cutReader's reader goes through the proxy: it is A here.
	a, b = b, a
	termA, err := a.Campaign(ctx, store.Candidate{ID: "a", Address: "127.0.0.1:1"}, electTTL)
	if err != nil {
		t.Fatal(err)
	}
	asA := store.WithFence(ctx, termA.Fence)
	if err := a.Update(asA, putIdentity("while-leading")); err != nil {
		t.Fatalf("fenced write of the leader: %v", err)
	}

	// B campaigns: it waits for A's term.
	type result struct {
		term *store.Term
		err  error
		at   time.Time
	}
	elected := make(chan result, 1)
	go func() {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		term, err := b.Campaign(c, store.Candidate{ID: "b", Address: "127.0.0.1:2"}, electTTL)
		elected <- result{term, err, time.Now()}
	}()
	select {
	case r := <-elected:
		t.Fatalf("B elected while A holds its term: %v", r.err)
	case <-time.After(electTTL + 500*time.Millisecond):
	}

	cutOff(t, a, p)
	cut := time.Now()
	var termB *store.Term
	select {
	case r := <-elected:
		if r.err != nil {
			t.Fatal(r.err)
		}
		termB = r.term
		t.Logf("A cut off from etcd: B elected after %s (lease %s)", r.at.Sub(cut).Round(time.Millisecond), electTTL)
	case <-time.After(4 * electTTL):
		t.Fatalf("B not elected %s after A was cut off", 4*electTTL)
	}
	if c, ok, err := b.Leader(ctx); err != nil || !ok || c.ID != "b" {
		t.Fatalf("leader = %+v (ok %v, err %v), want b", c, ok, err)
	}

	p.setCut(false)
	// A is back and its client works: an unfenced write lands.
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.Update(c, putIdentity("unfenced")); err != nil {
		t.Fatalf("A's unfenced write after reconnecting: %v", err)
	}
	var seqBefore uint64
	view(t, b, func(tx *store.Tx) error { seqBefore = tx.LastSeq(); return nil })
	// A's late write, made as the leader it no longer is.
	err = a.Update(store.WithFence(c, termA.Fence), putIdentity("late"))
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("deposed leader's fenced write: %v, want ErrNotLeader", err)
	}
	t.Logf("deposed leader's late write refused: %v", err)
	view(t, b, func(tx *store.Tx) error {
		if _, err := tx.Identity("late"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the late write landed: %v", err)
		}
		if got := tx.LastSeq(); got != seqBefore {
			t.Errorf("audit log moved from %d to %d: part of the late write landed", seqBefore, got)
		}
		return nil
	})
	select {
	case <-termA.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("A's term is not over 10s after its lease expired")
	}
	if err := b.Update(store.WithFence(ctx, termB.Fence), putIdentity("new-leader")); err != nil {
		t.Fatalf("the new leader's fenced write: %v", err)
	}
	if err := termB.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Update(store.WithFence(ctx, termB.Fence), putIdentity("after-resign")); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("fenced write after resigning: %v, want ErrNotLeader", err)
	}
	check(t, b)
}

// TestFencesInGroupCommit: Updates of an ended term, of the current one
// and unfenced ones arrive together on one replica. Each group commit
// holds one fence only, so the ended term's Updates all fail with
// ErrNotLeader and the others all land.
func TestFencesInGroupCommit(t *testing.T) {
	s := openEtcd(t, etcdConfig(t, newPrefix(t)))
	ended, err := s.Campaign(ctx, store.Candidate{ID: "a"}, electTTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := ended.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	term, err := s.Campaign(ctx, store.Candidate{ID: "a"}, electTTL)
	if err != nil {
		t.Fatal(err)
	}
	defer term.Resign(ctx)
	const n = 20
	type result struct {
		kind string
		err  error
	}
	results := make(chan result, 3*n)
	for i := range n {
		for _, w := range []struct {
			kind string
			ctx  context.Context
		}{
			{"ended", store.WithFence(ctx, ended.Fence)},
			{"current", store.WithFence(ctx, term.Fence)},
			{"unfenced", ctx},
		} {
			go func() {
				results <- result{w.kind, s.Update(w.ctx, putIdentity(fmt.Sprintf("%s-%d", w.kind, i)))}
			}()
		}
	}
	for range 3 * n {
		r := <-results
		if r.kind == "ended" && !errors.Is(r.err, store.ErrNotLeader) {
			t.Errorf("write of an ended term: %v, want ErrNotLeader", r.err)
		}
		if r.kind != "ended" && r.err != nil {
			t.Errorf("%s write: %v", r.kind, r.err)
		}
	}
	view(t, s, func(tx *store.Tx) error {
		ids, err := tx.Identities()
		count := map[string]int{}
		for _, id := range ids {
			count[strings.SplitN(id.Name, "-", 2)[0]]++
		}
		if count["ended"] != 0 || count["current"] != n || count["unfenced"] != n {
			t.Errorf("identities written: %v, want %d current and %d unfenced", count, n, n)
		}
		return err
	})
	t.Logf("%d Updates in %d etcd transactions", 2*n, store.EtcdTxns(s))
	check(t, s)
}

// TestBboltIgnoresFences: on bbolt the process always leads; a fence
// changes nothing, even after its term was resigned.
func TestBboltIgnoresFences(t *testing.T) {
	s := openCfg(t, config(t, filepath.Join(t.TempDir(), "data")))
	term, err := s.Campaign(ctx, store.Candidate{ID: "solo"}, electTTL)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok, err := s.Leader(ctx); err != nil || !ok || c.ID != "solo" {
		t.Fatalf("leader = %+v (ok %v, err %v)", c, ok, err)
	}
	// A second campaign in the process waits for the first term.
	c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := s.Campaign(c, store.Candidate{ID: "other"}, electTTL); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second campaign on bbolt: %v, want it to wait", err)
	}
	term.Resign(ctx)
	if err := s.Update(store.WithFence(ctx, term.Fence), putIdentity("x")); err != nil {
		t.Fatalf("fenced write on bbolt: %v", err)
	}
	if _, ok, _ := s.Leader(ctx); ok {
		t.Fatal("a leader after the only term was resigned")
	}
}
