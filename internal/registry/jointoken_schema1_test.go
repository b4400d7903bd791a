package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// TestSchema1JoinTokenRedeemsOnce opens a data directory written by a
// meshca whose node records carried the join token's hash (schema 1,
// written here with bbolt directly): the pending token still redeems,
// once, an expired one does not, and the node records no longer carry a
// token.
func TestSchema1JoinTokenRedeemsOnce(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	const token = "pending-token-of-a-schema-1-file"
	node := func(name, token string, expires time.Time) []byte {
		rec := map[string]any{
			"name": name, "kind": "sidecar", "state": store.StateActive, "token_expires": expires,
			"joined_at": time.Time{}, "created_at": t0.Add(-time.Hour), "updated_at": t0.Add(-time.Hour),
		}
		if token != "" {
			rec["token_hash"] = tokenHash(token)
		}
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket([]byte("meta"))
		if err != nil {
			return err
		}
		if err := meta.Put([]byte("schema"), []byte("1")); err != nil {
			return err
		}
		nodes, err := tx.CreateBucket([]byte("nodes"))
		if err != nil {
			return err
		}
		if err := nodes.Put([]byte("n1"), node("n1", token, t0.Add(time.Hour))); err != nil {
			return err
		}
		return nodes.Put([]byte("late"), node("late", "expired-token", t0.Add(-time.Minute)))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	st := openStore(t, dir)
	r := newRegistry(t, st, clock.NewFake(t0))
	if _, err := r.Join(ctx, "late", "expired-token", csr(t), "test"); !errors.Is(err, ErrToken) {
		t.Fatalf("expired token of a schema 1 file: %v", err)
	}
	j, err := r.Join(ctx, "n1", token, csr(t), "test")
	if err != nil {
		t.Fatalf("pending token of a schema 1 file: %v", err)
	}
	if !j.Node.JoinedAt.Equal(t0) {
		t.Errorf("joined node = %+v", j.Node)
	}
	if _, err := r.Join(ctx, "n1", token, csr(t), "test"); !errors.Is(err, ErrToken) {
		t.Fatalf("second use of the token: %v", err)
	}
	if n, err := r.Node(ctx, "late"); err != nil || !n.JoinedAt.IsZero() {
		t.Errorf("late = %+v, %v; want never joined", n, err)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("nodes")).ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte("token")) {
				t.Errorf("node %s still carries a token: %s", k, v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}
