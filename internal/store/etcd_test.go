package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// twoReplicas opens two stores on one fresh prefix, as two meshca
// replicas would.
func twoReplicas(t *testing.T) (a, b *store.Store) {
	t.Helper()
	prefix := newPrefix(t)
	return openEtcd(t, etcdConfig(t, prefix)), openEtcd(t, etcdConfig(t, prefix))
}

// TestEtcdConflictRetries interleaves two replicas' transactions on the
// same record: A reads, B commits a change to what A read, A commits. A's
// commit must fail its compare and run again on B's result, so both
// increments land exactly once.
func TestEtcdConflictRetries(t *testing.T) {
	cases := []struct {
		name string
		// setup runs first; read is A's read, between which and A's
		// commit B runs interfere; write is A's write, computed from read.
		setup     func(*store.Tx) error
		read      func(*store.Tx) (int, error)
		interfere func(*store.Tx) error
		write     func(*store.Tx, int) error
		want      func(*testing.T, *store.Tx)
	}{
		{
			name:  "same key",
			setup: func(tx *store.Tx) error { return tx.PutIdentity(store.Identity{Name: "x"}) },
			read: func(tx *store.Tx) (int, error) {
				id, err := tx.Identity("x")
				return int(id.TTL), err
			},
			interfere: func(tx *store.Tx) error {
				id, err := tx.Identity("x")
				if err != nil {
					return err
				}
				id.TTL++
				return tx.PutIdentity(id)
			},
			write: func(tx *store.Tx, ttl int) error {
				return tx.PutIdentity(store.Identity{Name: "x", TTL: time.Duration(ttl + 1)})
			},
			want: func(t *testing.T, tx *store.Tx) {
				if id, _ := tx.Identity("x"); id.TTL != 2 {
					t.Errorf("TTL = %d, want 2: an increment was lost", id.TTL)
				}
			},
		},
		{
			name:  "key added to a scanned range",
			setup: func(tx *store.Tx) error { return tx.PutNode(store.Node{Name: "n1"}) },
			read: func(tx *store.Tx) (int, error) {
				ns, err := tx.Nodes()
				return len(ns), err
			},
			interfere: func(tx *store.Tx) error { return tx.PutNode(store.Node{Name: "n2"}) },
			write: func(tx *store.Tx, n int) error {
				return tx.PutIdentity(store.Identity{Name: "count", TTL: time.Duration(n)})
			},
			want: func(t *testing.T, tx *store.Tx) {
				if id, _ := tx.Identity("count"); id.TTL != 2 {
					t.Errorf("count = %d, want 2: the added node was missed", id.TTL)
				}
			},
		},
		{
			name: "key deleted from a scanned range",
			setup: func(tx *store.Tx) error {
				if err := tx.PutNode(store.Node{Name: "n1"}); err != nil {
					return err
				}
				return tx.PutNode(store.Node{Name: "n2"})
			},
			read: func(tx *store.Tx) (int, error) {
				ns, err := tx.Nodes()
				return len(ns), err
			},
			interfere: func(tx *store.Tx) error { return tx.DeleteNode("n1") },
			write: func(tx *store.Tx, n int) error {
				return tx.PutIdentity(store.Identity{Name: "count", TTL: time.Duration(n)})
			},
			want: func(t *testing.T, tx *store.Tx) {
				if id, _ := tx.Identity("count"); id.TTL != 1 {
					t.Errorf("count = %d, want 1: the deleted node was missed", id.TTL)
				}
			},
		},
		{
			// More keys read than etcd takes compares in one transaction:
			// they are merged into range compares, which must still see
			// B's change.
			name:  "more reads than compares allowed",
			setup: putIdentities(100),
			read: func(tx *store.Tx) (int, error) {
				found := 0
				for i := range 150 {
					_, err := tx.Identity(fmt.Sprintf("id-%03d", i))
					switch {
					case err == nil:
						found++
					case !errors.Is(err, store.ErrNotFound):
						return 0, err
					}
				}
				return found, nil
			},
			// B adds a key A found missing.
			interfere: func(tx *store.Tx) error { return tx.PutIdentity(store.Identity{Name: "id-120"}) },
			write: func(tx *store.Tx, n int) error {
				return tx.PutIdentity(store.Identity{Name: "id-050", TTL: time.Duration(n)})
			},
			want: func(t *testing.T, tx *store.Tx) {
				if id, _ := tx.Identity("id-050"); id.TTL != 101 {
					t.Errorf("id-050 TTL = %d, want 101: B's added identity was missed", id.TTL)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := twoReplicas(t)
			update(t, a, audited("setup", tc.setup))
			var runs atomic.Int32
			readDone, interfered := make(chan struct{}), make(chan struct{})
			errA := make(chan error, 1)
			go func() {
				errA <- a.Update(ctx, audited("a", func(tx *store.Tx) error {
					v, err := tc.read(tx)
					if err != nil {
						return err
					}
					if runs.Add(1) == 1 {
						close(readDone)
						<-interfered
					}
					return tc.write(tx, v)
				}))
			}()
			<-readDone
			update(t, b, audited("b", tc.interfere))
			close(interfered)
			if err := <-errA; err != nil {
				t.Fatal(err)
			}
			if got := runs.Load(); got != 2 {
				t.Errorf("A's function ran %d times, want 2 (once, then again after the conflict)", got)
			}
			view(t, b, func(tx *store.Tx) error {
				tc.want(t, tx)
				if got := tx.LastSeq(); got != 3 {
					t.Errorf("LastSeq = %d, want 3: setup, B, A once each", got)
				}
				return nil
			})
			check(t, b)
		})
	}
}

// TestEtcdTooLarge checks etcd's limits: a transaction with more writes
// than --max-txn-ops, or bigger than --max-request-bytes, fails with
// ErrTooLarge and writes nothing, whether the store or the server finds
// it too large.
func TestEtcdTooLarge(t *testing.T) {
	bigDoc := strings.Repeat("x", 2<<20) // 2 MiB: over etcd's 1.5 MiB default
	cases := []struct {
		name string
		cfg  func(*store.EtcdConfig)
		fn   func(*store.Tx) error
	}{
		{"too many writes, found by the store", nil, putIdentities(200)},
		{"too many writes, found by the server", func(c *store.EtcdConfig) { c.MaxTxnOps = 1000 }, putIdentities(200)},
		{"too many bytes, found by the store", nil, appendMesh(bigDoc)},
		{"too many bytes, found by the server", func(c *store.EtcdConfig) { c.MaxRequestBytes = 4 << 20 }, appendMesh(bigDoc[:1200<<10])}, // 1.6 MB as JSON,
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := etcdConfig(t, newPrefix(t))
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			s := openEtcd(t, cfg)
			err := s.Update(ctx, audited("big", tc.fn))
			wantErr(t, err, store.ErrTooLarge)
			t.Logf("error: %v", err)
			view(t, s, func(tx *store.Tx) error {
				ids, _ := tx.Identities()
				if _, err := tx.LatestMesh(); !errors.Is(err, store.ErrNotFound) || len(ids) != 0 || tx.LastSeq() != 0 {
					t.Errorf("something was written: %d identities, mesh %v, LastSeq %d", len(ids), err, tx.LastSeq())
				}
				return nil
			})
			// Within the limits the same store works.
			update(t, s, audited("small", putIdentities(100)))
		})
	}
}

func putIdentities(n int) func(*store.Tx) error {
	return func(tx *store.Tx) error {
		for i := range n {
			if err := tx.PutIdentity(store.Identity{Name: fmt.Sprintf("id-%03d", i)}); err != nil {
				return err
			}
		}
		return nil
	}
}

func appendMesh(doc string) func(*store.Tx) error {
	return func(tx *store.Tx) error {
		_, err := tx.AppendMesh([]byte(doc), "admin")
		return err
	}
}

// TestEtcdReplicasShareFeed checks that a change committed through one
// replica reaches the other's subscribers and NodesVersion.
func TestEtcdReplicasShareFeed(t *testing.T) {
	a, b := twoReplicas(t)
	sub := b.Subscribe(0)
	defer sub.Close()
	nv := b.NodesVersion()
	start := time.Now()
	update(t, a, audited("node.create", func(tx *store.Tx) error { return tx.PutNode(store.Node{Name: "n1"}) }))
	bt := next(t, sub)
	t.Logf("write on A to batch on B: %v", time.Since(start))
	if len(bt.Changes) != 1 || bt.Changes[0] != (store.Change{Kind: store.KindNode, Key: "n1"}) || bt.Seq != 1 {
		t.Errorf("B's batch = %+v, want node n1 at Seq 1", bt)
	}
	if b.NodesVersion() == nv {
		t.Error("B's NodesVersion did not change after A wrote a node")
	}
}

// cutReader opens a writer on the member directly and a reader through a
// proxy that the test can cut, both on one fresh prefix.
func cutReader(t *testing.T) (w, r *store.Store, p *cutProxy) {
	t.Helper()
	prefix := newPrefix(t)
	p = newCutProxy(t, etcdEndpointFor(t))
	rcfg := etcdConfig(t, prefix)
	rcfg.Endpoints = []string{p.addr()}
	rcfg.DialTimeout = 2 * time.Second
	return openEtcd(t, etcdConfig(t, prefix)), openEtcd(t, rcfg), p
}

// cutOff cuts the proxy and proves the reader cannot reach etcd.
func cutOff(t *testing.T, r *store.Store, p *cutProxy) {
	t.Helper()
	p.setCut(true)
	c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := r.View(c, func(tx *store.Tx) error { _, err := tx.Identities(); return err }); err == nil {
		t.Fatal("the reader still reaches etcd through the cut proxy")
	}
}

// TestEtcdWatchResumes cuts the reader's connection, commits through the
// writer meanwhile, and restores it: the reader's subscriber receives every
// change, in order, without a resync.
func TestEtcdWatchResumes(t *testing.T) {
	w, r, p := cutReader(t)
	sub := r.Subscribe(0)
	defer sub.Close()
	update(t, w, putIdentity("before"))
	if bt := next(t, sub); len(bt.Changes) != 1 || bt.Changes[0].Key != "before" {
		t.Fatalf("first batch = %+v", bt)
	}
	cutOff(t, r, p)
	for _, n := range []string{"c1", "c2", "c3"} {
		update(t, w, putIdentity(n))
	}
	start := time.Now()
	p.setCut(false)
	var got []string
	for len(got) < 3 {
		bt := next(t, sub)
		if bt.Resync {
			t.Fatalf("resync after a disconnect with nothing compacted: %+v", bt)
		}
		for _, c := range bt.Changes {
			got = append(got, c.Key)
		}
		if bt.Seq > 4 {
			t.Fatalf("Seq %d beyond the last commit", bt.Seq)
		}
	}
	t.Logf("reconnected and caught up %d commits in %v", len(got), time.Since(start))
	if strings.Join(got, " ") != "c1 c2 c3" {
		t.Errorf("changes after reconnecting = %v, want c1 c2 c3", got)
	}
}

// TestEtcdCompactedResyncs cuts the reader off, commits, and compacts
// etcd past the reader's last revision: the watch cannot resume, so the
// subscriber gets a Resync at the present Seq, and later changes flow
// again.
func TestEtcdCompactedResyncs(t *testing.T) {
	w, r, p := cutReader(t)
	sub := r.Subscribe(0)
	defer sub.Close()
	cutOff(t, r, p)
	for _, n := range []string{"c1", "c2", "c3"} {
		update(t, w, putIdentity(n))
	}
	cli := etcdClient(t)
	resp, err := cli.Get(ctx, "compaction-point")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.setCut(false)
	bt := next(t, sub)
	t.Logf("compacted revision %d: resync after %v", resp.Header.Revision, time.Since(start))
	if !bt.Resync || bt.Seq != 3 {
		t.Fatalf("batch after compaction = %+v, want Resync at Seq 3", bt)
	}
	update(t, w, putIdentity("after"))
	bt = next(t, sub)
	if bt.Resync || len(bt.Changes) != 1 || bt.Changes[0].Key != "after" || bt.Seq != 4 {
		t.Errorf("batch after the resync = %+v, want identity after at Seq 4", bt)
	}
}

// TestEtcdReplicasIncrement has writers on two replicas increment one
// counter: their transactions conflict across replicas and run again, and
// no increment is lost or applied twice; the audit log stays gapless.
func TestEtcdReplicasIncrement(t *testing.T) {
	a, b := twoReplicas(t)
	update(t, a, audited("create", func(tx *store.Tx) error {
		return tx.PutIdentity(store.Identity{Name: "counter"})
	}))
	const perReplica, each = 3, 10
	var runs atomic.Int64
	errs := make(chan error, 2*perReplica)
	for _, s := range []*store.Store{a, b} {
		for range perReplica {
			go func() {
				for range each {
					err := s.Update(ctx, audited("inc", func(tx *store.Tx) error {
						runs.Add(1)
						id, err := tx.Identity("counter")
						if err != nil {
							return err
						}
						id.TTL++
						return tx.PutIdentity(id)
					}))
					if err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
	}
	for range 2 * perReplica {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	const total = 2 * perReplica * each
	view(t, b, func(tx *store.Tx) error {
		id, err := tx.Identity("counter")
		if err != nil {
			return err
		}
		if id.TTL != total {
			t.Errorf("counter = %d after %d increments", id.TTL, total)
		}
		evs, err := tx.Events(0, 0)
		if err != nil {
			return err
		}
		for i, ev := range evs {
			if ev.Seq != uint64(i+1) {
				t.Fatalf("event %d has Seq %d", i, ev.Seq)
			}
		}
		if len(evs) != total+1 {
			t.Errorf("%d audit events, want %d", len(evs), total+1)
		}
		return nil
	})
	t.Logf("%d increments from 2 replicas: %d runs of the function (%d again after a conflict)", total, runs.Load(), runs.Load()-total)
	check(t, a)
}

// TestEtcdCheckFindsDamage damages the keys of a store behind its back, as
// a stray etcdctl would: Check names each problem.
func TestEtcdCheckFindsDamage(t *testing.T) {
	prefix := newPrefix(t)
	s := openEtcd(t, etcdConfig(t, prefix))
	for _, n := range []string{"a", "b", "c"} {
		update(t, s, putIdentity(n))
	}
	check(t, s)
	cli := etcdClient(t)
	if _, err := cli.Put(ctx, prefix+"/last/audit", "\x00\x00\x00\x00\x00\x00\x00\x02"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, prefix+"/b/audit/\x00\x00\x00\x00\x00\x00\x00\x01"); err != nil {
		t.Fatal(err)
	}
	err := s.Check(ctx)
	if err == nil {
		t.Fatal("Check found nothing")
	}
	for _, want := range []string{"audit seq: gap: found 2, want 1", "last key of audit: counter says 0000000000000002, greatest key is 0000000000000003"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Check error %q does not say %q", err, want)
		}
	}
}

// TestEtcdViewIsASnapshot has another replica commit between two reads of
// one View: the second read still sees the state of the first.
func TestEtcdViewIsASnapshot(t *testing.T) {
	a, b := twoReplicas(t)
	update(t, a, audited("setup", func(tx *store.Tx) error {
		if err := tx.PutIdentity(store.Identity{Name: "x", TTL: 1}); err != nil {
			return err
		}
		return tx.PutIdentity(store.Identity{Name: "y", TTL: 1})
	}))
	view(t, a, func(tx *store.Tx) error {
		x, err := tx.Identity("x")
		if err != nil {
			return err
		}
		update(t, b, audited("both", func(tx *store.Tx) error {
			if err := tx.PutIdentity(store.Identity{Name: "x", TTL: 2}); err != nil {
				return err
			}
			return tx.PutIdentity(store.Identity{Name: "y", TTL: 2})
		}))
		y, err := tx.Identity("y")
		if err != nil {
			return err
		}
		ids, err := tx.Identities()
		if err != nil {
			return err
		}
		if x.TTL != 1 || y.TTL != 1 || len(ids) != 2 || ids[1].TTL != 1 {
			t.Errorf("View saw x=%d y=%d scan %+v: want the state at its first read (all 1)", x.TTL, y.TTL, ids)
		}
		return nil
	})
}

// TestEtcdUnreachable cuts a replica off etcd: its Update fails when its
// context ends, with nothing written, and works again once etcd is back.
func TestEtcdUnreachable(t *testing.T) {
	w, r, p := cutReader(t)
	cutOff(t, r, p)
	c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := r.Update(c, putIdentity("lost"))
	if err == nil {
		t.Fatal("Update succeeded without etcd")
	}
	t.Logf("Update without etcd failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	view(t, w, func(tx *store.Tx) error {
		if _, err := tx.Identity("lost"); !errors.Is(err, store.ErrNotFound) || tx.LastSeq() != 0 {
			t.Errorf("the failed Update left something: %v, LastSeq %d", err, tx.LastSeq())
		}
		return nil
	})
	p.setCut(false)
	c2, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	if err := r.Update(c2, putIdentity("back")); err != nil {
		t.Fatalf("Update after etcd came back: %v", err)
	}
}

// TestEtcdGroupCommit has many concurrent Updates on one replica share
// etcd transactions, with the audit log gapless and every change fed.
func TestEtcdGroupCommit(t *testing.T) {
	s := openEtcd(t, etcdConfig(t, newPrefix(t)))
	sub := s.Subscribe(0)
	defer sub.Close()
	before := store.EtcdTxns(s)
	const n = 64
	errs := make(chan error, n)
	start := time.Now()
	for i := range n {
		go func() { errs <- s.Update(ctx, putIdentity(fmt.Sprintf("id-%02d", i))) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	txns := store.EtcdTxns(s) - before
	t.Logf("%d concurrent Updates in %d etcd transactions, %v", n, txns, took)
	if txns >= n {
		t.Errorf("%d Updates took %d transactions: no group commit", n, txns)
	}
	seen := map[string]bool{}
	for len(seen) < n {
		for _, c := range next(t, sub).Changes {
			seen[c.Key] = true
		}
	}
	check(t, s)
}
