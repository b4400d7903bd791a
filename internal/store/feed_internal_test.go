package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/seal"
)

// TestFeedGroupCommitRerun checks that a function run twice by the group
// commit (another caller's failure rolled back their shared transaction)
// reports only the changes of its committed run, and the failed caller's
// none.
func TestFeedGroupCommitRerun(t *testing.T) {
	sealer, err := seal.New(bytes.Repeat([]byte{7}, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(Config{Dir: filepath.Join(t.TempDir(), "data"), Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	queued := make(chan struct{}, 4)
	s.commits.onQueue = func() { queued <- struct{}{} }
	sub := s.Subscribe(0)
	defer sub.Close()
	ctx := context.Background()
	put := func(tx *Tx, name string) error {
		if err := tx.PutIdentity(Identity{Name: name}); err != nil {
			return err
		}
		_, err := tx.Append(Event{Action: "test"})
		return err
	}

	// A holds the committer inside its transaction while B, then C, queue
	// up for the next one.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var runsB atomic.Int32
	errs := make(chan error, 3)
	go func() {
		errs <- s.Update(ctx, func(tx *Tx) error {
			once.Do(func() { close(entered) })
			<-release
			return put(tx, "a")
		})
	}()
	<-queued
	<-entered
	go func() {
		errs <- s.Update(ctx, func(tx *Tx) error {
			if runsB.Add(1) == 1 {
				return put(tx, "ghost") // rolled back with C's failure
			}
			return put(tx, "real")
		})
	}()
	<-queued
	refused := errors.New("refused")
	go func() {
		errs <- s.Update(ctx, func(tx *Tx) error {
			if err := put(tx, "c"); err != nil {
				return err
			}
			return refused
		})
	}()
	<-queued
	close(release)
	var got []error
	for range 3 {
		got = append(got, <-errs)
	}
	if n := slices.IndexFunc(got, func(err error) bool { return errors.Is(err, refused) }); n < 0 {
		t.Fatalf("C's failure not returned: %v", got)
	}
	if runsB.Load() != 2 {
		t.Fatalf("B ran %d times; the test needs it to run twice", runsB.Load())
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var keys []string
	for len(keys) < 2 {
		b, err := sub.Next(wctx)
		if err != nil {
			t.Fatalf("Next: %v (have %v)", err, keys)
		}
		for _, c := range b.Changes {
			keys = append(keys, c.Key)
		}
	}
	if !slices.Equal(keys, []string{"a", "real"}) {
		t.Fatalf("feed reported %v, want [a real]", keys)
	}
	err = s.View(ctx, func(tx *Tx) error {
		if _, err := tx.Identity("ghost"); !errors.Is(err, ErrNotFound) {
			t.Errorf("ghost identity stored: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
