package store_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/meshca/meshca/internal/store"
)

// TestNodeAcksOnEtcd: a replica's report of its nodes needs its
// registration, lists beside every registered replica (one that has not
// reported is listed by ID alone), is read by another replica, and goes
// when the replica stops.
func TestNodeAcksOnEtcd(t *testing.T) {
	prefix := newPrefix(t)
	a, b := openEtcd(t, etcdConfig(t, prefix)), openEtcd(t, etcdConfig(t, prefix))
	report := store.NodeAcks{Replica: "ra", Version: "v1", Seq: 7, Connected: 3, Pending: 1, At: t0}
	if err := a.PutNodeAcks(ctx, report); !errors.Is(err, store.ErrNotRegistered) {
		t.Fatalf("PutNodeAcks before registering = %v, want ErrNotRegistered", err)
	}
	regA, stopA := runReplica(t, a, store.Replica{ID: "ra", XDS: "127.0.0.1:1"})
	waitRegistered(t, regA, "ra")
	regB, _ := runReplica(t, b, store.Replica{ID: "rb", XDS: "127.0.0.1:2"})
	waitRegistered(t, regB, "rb")
	if err := b.PutNodeAcks(ctx, store.NodeAcks{Replica: "ra"}); !errors.Is(err, store.ErrNotRegistered) {
		t.Fatalf("PutNodeAcks for a replica registered by another process = %v, want ErrNotRegistered", err)
	}
	if err := a.PutNodeAcks(ctx, report); err != nil {
		t.Fatal(err)
	}
	got, err := b.NodeAcks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.NodeAcks{report, {Replica: "rb"}}
	if !slices.EqualFunc(got, want, func(x, y store.NodeAcks) bool {
		return x.Replica == y.Replica && x.Version == y.Version && x.Seq == y.Seq && x.Connected == y.Connected && x.Pending == y.Pending && x.At.Equal(y.At)
	}) {
		t.Fatalf("NodeAcks = %+v, want %+v", got, want)
	}
	// A stopped replica revokes its lease before RunReplica returns: its
	// report goes with it.
	stopA()
	if got, err = b.NodeAcks(ctx); err != nil || len(got) != 1 || got[0].Replica != "rb" {
		t.Fatalf("NodeAcks after ra stopped = %+v, %v; want rb alone", got, err)
	}
	if err := a.PutNodeAcks(ctx, report); !errors.Is(err, store.ErrNotRegistered) {
		t.Fatalf("PutNodeAcks after the replica stopped = %v, want ErrNotRegistered", err)
	}
}

// TestNodeAcksOnBolt: with one process there is nobody else to count:
// publishing does nothing and reading finds nothing.
func TestNodeAcksOnBolt(t *testing.T) {
	s, _ := newStore(t)
	if err := s.PutNodeAcks(context.Background(), store.NodeAcks{Replica: "r", Connected: 1}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.NodeAcks(context.Background()); err != nil || len(got) != 0 {
		t.Fatalf("NodeAcks on bbolt = %+v, %v; want none", got, err)
	}
}
