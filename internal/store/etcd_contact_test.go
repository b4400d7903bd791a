package store_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// errNoEtcd is what the tests' owner of the store says once it has lost
// etcd.
var errNoEtcd = errors.New("no answer from etcd: not signing")

// TestEtcdCallsInFlightEndWhenContactLost: a read and an Update that
// started while the replica still had etcd, and now wait for a member that
// does not answer, end as soon as Contact reports the loss, with
// Contact's error, instead of waiting as long as their context allows
// (here: none). When Contact is fine again, calls go through.
func TestEtcdCallsInFlightEndWhenContactLost(t *testing.T) {
	var lost atomic.Bool
	prefix := newPrefix(t)
	p := newCutProxy(t, etcdEndpointFor(t))
	cfg := etcdConfig(t, prefix)
	cfg.Endpoints = []string{p.addr()}
	cfg.Contact = func() error {
		if lost.Load() {
			return errNoEtcd
		}
		return nil
	}
	s := openEtcd(t, cfg)
	update(t, s, putIdentity("before"))

	p.setCut(true)
	type result struct {
		what string
		err  error
	}
	results := make(chan result, 2)
	// Both start while Contact still says etcd is there, and wait.
	go func() {
		results <- result{"view", s.View(ctx, func(tx *store.Tx) error { _, err := tx.Identities(); return err })}
	}()
	go func() { results <- result{"update", s.Update(ctx, putIdentity("during"))} }()
	select {
	case r := <-results:
		t.Fatalf("%s returned while etcd was cut off and contact not yet lost: %v", r.what, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	lost.Store(true)
	declared := time.Now()
	for range 2 {
		select {
		case r := <-results:
			if !errors.Is(r.err, errNoEtcd) {
				t.Fatalf("%s after contact was lost: %v, want the owner's verdict", r.what, r.err)
			}
			t.Logf("%s in flight ended %s after contact was declared lost: %v", r.what, time.Since(declared).Round(time.Millisecond), r.err)
		case <-time.After(5 * time.Second):
			t.Fatal("a call in flight still waits 5s after contact was declared lost")
		}
	}

	p.setCut(false)
	lost.Store(false)
	// The store follows Contact every 100ms: the next call may start
	// before it noticed, and still goes through once etcd answers.
	update(t, s, putIdentity("after"))
	check(t, s)
}
