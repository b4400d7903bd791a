package nodeconfig

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// TestUnreadableIdentityFailsTheBuild: an assigned identity whose
// record cannot be read fails the node's build; the node is not handed a
// configuration without that identity's secret, which would withdraw it
// from its proxies.
func TestUnreadableIdentityFailsTheBuild(t *testing.T) {
	f := newFixture(t, 0)
	f.write(t, ident("web", store.StateActive))
	f.write(t, node("n1", "web"))
	f.write(t, node("n2"))
	path := f.st.Path()
	if err := f.st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
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
	sealer, err := seal.New(bytes.Repeat([]byte{9}, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	f.st, err = store.Open(store.Config{Dir: filepath.Dir(path), Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.st.Close() })

	f.b, err = New(Config{Store: f.st, TrustDomain: td, Trust: f.trust, Publisher: f.pub, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	err = f.b.Sync(context.Background())
	if err == nil {
		t.Fatal("Sync succeeded with an unreadable identity")
	}
	t.Logf("sync: %v", err)
	f.pub.expect(t, "trust", "set n2")
	f.pub.quiet(t)
}
