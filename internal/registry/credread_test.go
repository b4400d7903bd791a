package registry

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// TestNodeCredentialsFailsOnUnreadableIdentity: an identity record that
// cannot be read fails the answer; it is never taken for "no secret",
// which would withdraw the secret from the node's proxies.
func TestNodeCredentialsFailsOnUnreadableIdentity(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	r := newRegistry(t, st, clock.NewFake(t0))
	for _, name := range []string{"echo", "web"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: name}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.AddNode(ctx, AddNode{Name: "n1", Identities: []string{"echo", "web"}}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, creds, err := r.NodeCredentials(ctx, "n1"); err != nil || len(creds) != 2 {
		t.Fatalf("before: %d credentials, %v", len(creds), err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("identities")).Put([]byte("web"), []byte("{not json"))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	st = openStore(t, dir)
	defer st.Close()
	r = newRegistry(t, st, clock.NewFake(t0))
	_, creds, err := r.NodeCredentials(ctx, "n1")
	if err == nil {
		t.Fatalf("an unreadable identity gave %d credentials and no error", len(creds))
	}
	t.Logf("unreadable identity: %v", err)
}
