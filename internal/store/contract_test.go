package store_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// The store contract, run against every backend (see backends_test.go).

func TestContractRoundTrip(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		ca := store.CA{Serial: "r1", Role: store.RoleRoot, Source: store.SourceGenerated, DER: []byte("root"), Key: []byte("root key"), NotBefore: t0, NotAfter: t0.Add(time.Hour)}
		set := store.CASet{IssuerSerial: "r1", RootSerials: []string{"r1"}}
		web := store.Identity{Name: "web", SPIFFEID: "spiffe://m/web", DNSNames: []string{"web"}, TTL: time.Hour, State: store.StateActive, CurrentSerial: "02", CreatedAt: t0}
		certs := []store.Credential{testCert("web", "03", t0.Add(2*time.Minute)), testCert("web", "01", t0), testCert("web", "02", t0.Add(time.Minute)), testCert("webx", "04", t0)}
		rev := store.Revocation{Serial: "01", Identity: "web", IssuerSerial: "r1", Reason: "keyCompromise", NotAfter: t0.Add(time.Hour), RevokedAt: t0}
		update(t, s, audited("setup", func(tx *store.Tx) error {
			if err := tx.PutCA(ca); err != nil {
				return err
			}
			if err := tx.SetCASet(set); err != nil {
				return err
			}
			if err := tx.InsertIdentity(web); err != nil {
				return err
			}
			for _, c := range certs {
				if err := tx.PutCert(c.Cert, c.Key); err != nil {
					return err
				}
			}
			for _, n := range []string{"n2", "n1", "n3"} {
				if err := tx.PutNode(store.Node{Name: n, State: store.StateActive}); err != nil {
					return err
				}
			}
			if err := tx.PutRevocation(rev); err != nil {
				return err
			}
			for _, doc := range []string{"v1", "v2"} {
				if _, err := tx.AppendMesh([]byte(doc), "admin"); err != nil {
					return err
				}
			}
			return nil
		}))
		update(t, s, audited("node.delete", func(tx *store.Tx) error { return tx.DeleteNode("n2") }))
		err := s.Update(ctx, audited("again", func(tx *store.Tx) error { return tx.InsertIdentity(web) }))
		wantErr(t, err, store.ErrExists)
		err = s.Update(ctx, audited("again", func(tx *store.Tx) error { return tx.PutCert(certs[0].Cert, certs[0].Key) }))
		wantErr(t, err, store.ErrExists)
		err = s.Update(ctx, audited("gone", func(tx *store.Tx) error { return tx.DeleteNode("n2") }))
		wantErr(t, err, store.ErrNotFound)

		verify := func(t *testing.T, s *store.Store) {
			view(t, s, func(tx *store.Tx) error {
				got, err := tx.Identity("web")
				if err != nil || got.SPIFFEID != web.SPIFFEID || got.CurrentSerial != "02" || !got.CreatedAt.Equal(t0) {
					t.Errorf("Identity(web) = %+v, %v", got, err)
				}
				if _, err := tx.Identity("nope"); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("Identity(nope): %v", err)
				}
				cs, err := tx.CertsFor("web")
				if err != nil || serials(cs) != "01 02 03 " {
					t.Errorf("CertsFor(web) = %q, %v; want 01 02 03 by NotBefore", serials(cs), err)
				}
				for _, c := range cs {
					cred, err := tx.Credential(c.Serial)
					if err != nil || string(cred.Key) != "key-of-"+c.Serial || !c.KeyHeld {
						t.Errorf("cert %s: key %q held %v, %v", c.Serial, cred.Key, c.KeyHeld, err)
					}
				}
				gca, err := tx.CA("r1")
				if err != nil || string(gca.Key) != "root key" {
					t.Errorf("CA(r1) key %q, %v", gca.Key, err)
				}
				gset, err := tx.CASet()
				if err != nil || gset.IssuerSerial != "r1" {
					t.Errorf("CASet = %+v, %v", gset, err)
				}
				nodes, err := tx.Nodes()
				var names []string
				for _, n := range nodes {
					names = append(names, n.Name)
				}
				if err != nil || !slices.Equal(names, []string{"n1", "n3"}) {
					t.Errorf("Nodes = %v, %v; want n1 n3", names, err)
				}
				revs, err := tx.Revocations()
				if err != nil || len(revs) != 1 || revs[0].Reason != rev.Reason {
					t.Errorf("Revocations = %+v, %v", revs, err)
				}
				m, err := tx.LatestMesh()
				if err != nil || m.Version != 2 || string(m.Document) != "v2" {
					t.Errorf("LatestMesh = %+v, %v", m, err)
				}
				hist, err := tx.MeshHistory()
				if err != nil || len(hist) != 2 || hist[0].Version != 1 {
					t.Errorf("MeshHistory = %+v, %v", hist, err)
				}
				if got := tx.LastSeq(); got != 2 {
					t.Errorf("LastSeq = %d, want 2 (failed updates leave no event)", got)
				}
				return nil
			})
			check(t, s)
		}
		verify(t, s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		verify(t, open(t))
	})
}

func TestContractAuditGapless(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		const writers, each = 8, 10
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					name := fmt.Sprintf("n%d-%d", w, i)
					err := s.Update(ctx, audited("node.create", func(tx *store.Tx) error {
						return tx.PutNode(store.Node{Name: name, State: store.StateActive})
					}))
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		view(t, s, func(tx *store.Tx) error {
			evs, err := tx.Events(0, 0)
			if err != nil {
				return err
			}
			if len(evs) != writers*each {
				t.Fatalf("%d events, want %d", len(evs), writers*each)
			}
			for i, ev := range evs {
				if ev.Seq != uint64(i+1) {
					t.Fatalf("event %d has Seq %d", i, ev.Seq)
				}
			}
			page, err := tx.Events(10, 5)
			if err != nil || len(page) != 5 || page[0].Seq != 11 || page[4].Seq != 15 {
				t.Errorf("Events(10, 5) = %d events from %v, %v", len(page), page, err)
			}
			return nil
		})
		check(t, s)
	})
}

// TestContractConcurrentUpdateIdempotent has many writers increment one
// counter (a read-modify-write that group commit or a conflict may run
// again): no increment may be lost or applied twice.
func TestContractConcurrentUpdateIdempotent(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		update(t, s, audited("create", func(tx *store.Tx) error {
			return tx.PutIdentity(store.Identity{Name: "counter", State: store.StateActive})
		}))
		const writers, each = 6, 8
		var wg sync.WaitGroup
		var runs sync.Map
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					key := fmt.Sprint(w, "-", i)
					err := s.Update(ctx, audited("inc", func(tx *store.Tx) error {
						n, _ := runs.LoadOrStore(key, new(int))
						*n.(*int)++
						id, err := tx.Identity("counter")
						if err != nil {
							return err
						}
						id.TTL++
						return tx.PutIdentity(id)
					}))
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		reruns := 0
		runs.Range(func(_, v any) bool { reruns += *v.(*int) - 1; return true })
		view(t, s, func(tx *store.Tx) error {
			id, err := tx.Identity("counter")
			if err != nil {
				return err
			}
			if id.TTL != writers*each {
				t.Errorf("counter = %d after %d increments", id.TTL, writers*each)
			}
			if got := tx.LastSeq(); got != writers*each+1 {
				t.Errorf("LastSeq = %d, want %d", got, writers*each+1)
			}
			return nil
		})
		t.Logf("%s: %d increments by %d writers, %d functions run again", b.name, writers*each, writers, reruns)
		check(t, s)
	})
}

func TestContractNoAuditNoWrite(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		err := s.Update(ctx, func(tx *store.Tx) error {
			return tx.PutIdentity(store.Identity{Name: "silent"})
		})
		wantErr(t, err, store.ErrNoAudit)
		err = s.View(ctx, func(tx *store.Tx) error {
			return tx.PutIdentity(store.Identity{Name: "ro"})
		})
		wantErr(t, err, store.ErrReadOnly)
		view(t, s, func(tx *store.Tx) error {
			ids, err := tx.Identities()
			if err != nil || len(ids) != 0 || tx.LastSeq() != 0 {
				t.Errorf("Identities = %v, %v; LastSeq %d: want nothing written", ids, err, tx.LastSeq())
			}
			return nil
		})
	})
}

// TestContractSealedKeys checks that keys are never stored in the clear,
// and that another key-encryption key cannot read them: bbolt opens and
// fails on each key (ErrSealed); etcd refuses at open (ErrKEKMismatch).
func TestContractSealedKeys(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			place := b.place(t)
			s, err := place(t, 0x42)
			if err != nil {
				t.Fatal(err)
			}
			var secrets [][]byte
			newKey := func() []byte {
				k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				der, err := x509.MarshalPKCS8PrivateKey(k)
				if err != nil {
					t.Fatal(err)
				}
				secrets = append(secrets, der, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), k.D.FillBytes(make([]byte, 32)))
				return der
			}
			ca := store.CA{Serial: "r1", Role: store.RoleRoot, Key: newKey()}
			c := testCert("web", "01", t0)
			c.Key = newKey()
			update(t, s, audited("setup", func(tx *store.Tx) error {
				if err := tx.PutCA(ca); err != nil {
					return err
				}
				return tx.PutCert(c.Cert, c.Key)
			}))
			view(t, s, func(tx *store.Tx) error {
				got, err := tx.Credential("01")
				if err != nil || !bytes.Equal(got.Key, c.Key) {
					t.Errorf("key did not round-trip: %v", err)
				}
				return nil
			})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			raw := b.raw(t, s, "")
			if len(raw) == 0 {
				t.Fatal("nothing stored")
			}
			for i, sec := range secrets {
				if bytes.Contains(raw, sec) {
					t.Errorf("stored bytes contain secret %d in the clear", i)
				}
			}

			other, err := place(t, 0x43)
			switch b.name {
			case "etcd":
				wantErr(t, err, store.ErrKEKMismatch)
				t.Logf("etcd open with another KEK: %v", err)
			default:
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
				err := other.View(ctx, func(tx *store.Tx) error {
					_, err := tx.Credential("01")
					return err
				})
				wantErr(t, err, store.ErrSealed)
			}
		})
	}
}

func TestContractFeed(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		sub := s.Subscribe(0)
		defer sub.Close()

		// Order across concurrent writers, Seq growing to the last event.
		const writers, each = 3, 10
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if err := s.Update(ctx, putIdentity(fmt.Sprintf("w%d-%02d", w, i))); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		seen := map[string]bool{}
		var order []string
		var seq uint64
		for len(seen) < writers*each {
			bt := next(t, sub)
			if bt.Seq <= seq || bt.Resync {
				t.Fatalf("batch Seq %d after %d, resync %v", bt.Seq, seq, bt.Resync)
			}
			seq = bt.Seq
			for _, c := range bt.Changes {
				if c.Kind != store.KindIdentity || seen[c.Key] {
					t.Fatalf("unexpected change %+v", c)
				}
				seen[c.Key] = true
				order = append(order, c.Key)
			}
		}
		wg.Wait()
		for w := range writers {
			var mine []string
			for _, k := range order {
				if k[:2] == fmt.Sprintf("w%d", w) {
					mine = append(mine, k)
				}
			}
			if !slices.IsSorted(mine) {
				t.Errorf("writer %d's changes out of order: %v", w, mine)
			}
		}
		if seq != writers*each {
			t.Errorf("last Seq %d, want %d", seq, writers*each)
		}
		if pos := s.FeedPos(); pos == 0 {
			t.Error("FeedPos = 0 after commits")
		}

		// Coalescing: three writes of a, one of b, while nobody reads.
		for _, n := range []string{"a", "b", "a", "a"} {
			update(t, s, putIdentity(n))
		}
		bt := next(t, sub)
		if len(bt.Changes) != 2 || bt.Changes[0].Key != "a" || bt.Changes[1].Key != "b" || bt.Seq != seq+4 {
			t.Errorf("coalesced batch = %+v, want a, b at Seq %d", bt, seq+4)
		}

		// Kinds and identities of changes.
		update(t, s, audited("kinds", func(tx *store.Tx) error {
			c := testCert("web", "0c", t0)
			if err := tx.PutCert(c.Cert, c.Key); err != nil {
				return err
			}
			if err := tx.PutNode(store.Node{Name: "n1"}); err != nil {
				return err
			}
			return tx.PutRevocation(store.Revocation{Serial: "0c", Identity: "web"})
		}))
		bt = next(t, sub)
		want := []store.Change{{Kind: store.KindCert, Key: "0c", Identity: "web"}, {Kind: store.KindNode, Key: "n1"}, {Kind: store.KindRevocation, Key: "0c", Identity: "web"}}
		if !slices.Equal(bt.Changes, want) {
			t.Errorf("changes = %+v, want %+v", bt.Changes, want)
		}

		// Overflow: more distinct changes than the limit turn into Resync.
		small := s.Subscribe(3)
		defer small.Close()
		for i := range 5 {
			update(t, s, putIdentity(fmt.Sprintf("o%d", i)))
		}
		bt = next(t, small)
		if !bt.Resync || len(bt.Changes) != 0 {
			t.Errorf("overflowed batch = %+v, want Resync", bt)
		}
	})
}

// TestContractFailuresApart: in a group commit, a function that fails
// gets its own error and leaves nothing behind; every other one commits.
func TestContractFailuresApart(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		errBoom := errors.New("boom")
		const n = 60
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.Update(ctx, func(tx *store.Tx) error {
					if err := tx.InsertIdentity(store.Identity{Name: fmt.Sprintf("id-%d", i)}); err != nil {
						return err
					}
					if _, err := tx.Append(store.Event{Action: "test"}); err != nil {
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
		view(t, s, func(tx *store.Tx) error {
			for i := range n {
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
			if got, want := tx.LastSeq(), uint64(n-(n+6)/7); got != want {
				t.Errorf("LastSeq = %d, want %d", got, want)
			}
			return nil
		})
		check(t, s)
	})
}

// TestContractPanicStaysWithItsCaller: a function that panics in a shared
// transaction panics again in its own caller's goroutine; the others
// commit.
func TestContractPanicStaysWithItsCaller(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		var wg sync.WaitGroup
		recovered := make(chan any, 1)
		errs := make([]error, 20)
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i == 7 {
					defer func() { recovered <- recover() }()
				}
				errs[i] = s.Update(ctx, func(tx *store.Tx) error {
					if i == 7 {
						panic("boom")
					}
					_, err := tx.Append(store.Event{Action: "test"})
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
		check(t, s)
	})
}
