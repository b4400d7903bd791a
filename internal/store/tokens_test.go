package store_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/store"
)

func TestJoinTokenRoundTrip(t *testing.T) {
	s, _ := newStore(t)
	tok := store.JoinToken{Node: "n1", Hash: bytes.Repeat([]byte{0xab}, 32), Expires: t0.Add(time.Hour)}

	err := s.Update(ctx, audited("node.token", func(tx *store.Tx) error { return tx.PutJoinToken(tok) }))
	wantErr(t, err, store.ErrNotFound) // no such node
	err = s.Update(ctx, audited("node.token", func(tx *store.Tx) error {
		return tx.PutJoinToken(store.JoinToken{Node: "n1", Expires: t0})
	}))
	wantErr(t, err, store.ErrInvalid) // no hash
	err = s.Update(ctx, func(tx *store.Tx) error {
		if err := tx.PutNode(store.Node{Name: "n1", State: store.StateActive}); err != nil {
			return err
		}
		return tx.PutJoinToken(tok)
	})
	wantErr(t, err, store.ErrNoAudit)

	update(t, s, audited("node.add", func(tx *store.Tx) error {
		if err := tx.PutNode(store.Node{Name: "n1", State: store.StateActive}); err != nil {
			return err
		}
		if err := tx.PutNode(store.Node{Name: "n2", State: store.StateActive}); err != nil {
			return err
		}
		if err := tx.PutJoinToken(store.JoinToken{Node: "n2", Hash: []byte{1}, Expires: t0}); err != nil {
			return err
		}
		return tx.PutJoinToken(tok)
	}))
	view(t, s, func(tx *store.Tx) error {
		got, err := tx.JoinToken("n1")
		if err != nil || !reflect.DeepEqual(got, tok) {
			t.Errorf("JoinToken(n1) = %+v, %v; want %+v", got, err, tok)
		}
		wantErr(t, tx.PutJoinToken(tok), store.ErrReadOnly)
		wantErr(t, tx.DeleteJoinToken("n1"), store.ErrReadOnly)
		return nil
	})
	check(t, s)

	// Deleting a token that is not there writes nothing, so it needs no
	// audit record.
	update(t, s, func(tx *store.Tx) error { return tx.DeleteJoinToken("n9") })
	update(t, s, audited("node.join", func(tx *store.Tx) error { return tx.DeleteJoinToken("n1") }))
	update(t, s, audited("node.delete", func(tx *store.Tx) error { return tx.DeleteNode("n2") }))
	view(t, s, func(tx *store.Tx) error {
		for _, n := range []string{"n1", "n2"} {
			_, err := tx.JoinToken(n)
			wantErr(t, err, store.ErrNotFound)
		}
		return nil
	})
	check(t, s)
}

// writeSchema1 writes a data directory as meshca wrote it at schema
// version 1, with bbolt directly: join tokens inside the node records.
func writeSchema1(t *testing.T, nodes map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range []string{"meta", "identities", "certs", "certs_by_identity", "cas", "nodes", "revocations", "mesh", "audit"} {
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		if err := tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("1")); err != nil {
			return err
		}
		for name, rec := range nodes {
			if err := tx.Bucket([]byte("nodes")).Put([]byte(name), []byte(rec)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOpenMovesSchema1JoinTokens(t *testing.T) {
	hash := bytes.Repeat([]byte{0x5a}, 32)
	hashJSON, _ := json.Marshal(hash)
	dir := writeSchema1(t, map[string]string{
		// Added, never joined: its token moves to its own record.
		"pending": `{"name":"pending","kind":"sidecar","identities":["web"],"token_hash":` + string(hashJSON) +
			`,"token_expires":"2026-03-02T12:00:00Z","joined_at":"0001-01-01T00:00:00Z","state":"active","created_at":"2026-03-01T12:00:00Z","updated_at":"2026-03-01T12:00:00Z"}`,
		// Joined before joined_at was recorded: no token, no expiry.
		"legacy": `{"name":"legacy","kind":"sidecar","token_expires":"0001-01-01T00:00:00Z","joined_at":"0001-01-01T00:00:00Z","state":"active","created_at":"2026-02-01T12:00:00Z","updated_at":"2026-02-02T12:00:00Z"}`,
		// Revoked before it joined: the token was cleared, the expiry kept.
		"revoked": `{"name":"revoked","kind":"sidecar","token_expires":"2026-03-02T12:00:00Z","joined_at":"0001-01-01T00:00:00Z","state":"revoked","created_at":"2026-03-01T12:00:00Z","updated_at":"2026-03-01T13:00:00Z"}`,
		// Joined, then given a new token to bootstrap again.
		"again": `{"name":"again","kind":"front-proxy","token_hash":"AQI=","token_expires":"2026-03-03T12:00:00Z","joined_at":"2026-02-01T12:00:00Z","state":"active","created_at":"2026-01-01T12:00:00Z","updated_at":"2026-03-01T12:00:00Z"}`,
	})

	s := openCfg(t, config(t, dir))
	check(t, s)
	view(t, s, func(tx *store.Tx) error {
		tok, err := tx.JoinToken("pending")
		if want := (store.JoinToken{Node: "pending", Hash: hash, Expires: time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)}); err != nil || !reflect.DeepEqual(tok, want) {
			t.Errorf("JoinToken(pending) = %+v, %v; want %+v", tok, err, want)
		}
		if tok, err := tx.JoinToken("again"); err != nil || !bytes.Equal(tok.Hash, []byte{1, 2}) {
			t.Errorf("JoinToken(again) = %+v, %v", tok, err)
		}
		for _, name := range []string{"legacy", "revoked"} {
			_, err := tx.JoinToken(name)
			wantErr(t, err, store.ErrNotFound)
		}
		for name, joined := range map[string]time.Time{
			"pending": {},
			"revoked": {},
			"legacy":  time.Date(2026, 2, 2, 12, 0, 0, 0, time.UTC), // its last update
			"again":   time.Date(2026, 2, 1, 12, 0, 0, 0, time.UTC),
		} {
			n, err := tx.Node(name)
			if err != nil || !n.JoinedAt.Equal(joined) {
				t.Errorf("Node(%s) = %+v, %v; want joined_at %s", name, n, err, joined)
			}
		}
		if n, _ := tx.Node("pending"); n.Kind != "sidecar" || !reflect.DeepEqual(n.Identities, []string{"web"}) || n.State != store.StateActive {
			t.Errorf("Node(pending) lost fields: %+v", n)
		}
		return nil
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// On disk: no node record carries a token any more, and the schema
	// is 2, so an older meshca refuses the file instead of misreading it.
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte("meta")).Get([]byte("schema")); string(v) != "2" {
			t.Errorf("schema = %s, want 2", v)
		}
		return tx.Bucket([]byte("nodes")).ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte("token")) || bytes.Contains(v, []byte(hashJSON)) {
				t.Errorf("node %s still carries its token: %s", k, v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}
