package store_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/store"
)

func TestReopenKeepsEverything(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cfg := config(t, dir)
	s := openCfg(t, cfg)
	c1, c2 := testCert("web", "01", t0), testCert("web", "02", t0.Add(time.Hour))
	ca := store.CA{Serial: "r1", Role: store.RoleRoot, DER: []byte("root"), Key: []byte("root key")}
	update(t, s, audited("setup", func(tx *store.Tx) error {
		for _, err := range []error{
			tx.PutCA(ca),
			tx.SetCASet(store.CASet{IssuerSerial: "r1", RootSerials: []string{"r1"}}),
			putCert(tx, c1),
			putCert(tx, c2),
			tx.InsertIdentity(store.Identity{Name: "web", CurrentSerial: "02"}),
			tx.PutNode(store.Node{Name: "n1"}),
			tx.PutRevocation(store.Revocation{Serial: "01", RevokedAt: t0}),
		} {
			if err != nil {
				return err
			}
		}
		_, err := tx.AppendMesh([]byte("doc"), "alice")
		return err
	}))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.View(ctx, func(*store.Tx) error { return nil }), store.ErrClosed)
	wantErr(t, s.Update(ctx, func(*store.Tx) error { return nil }), store.ErrClosed)

	s = openCfg(t, cfg)
	if want := filepath.Join(dir, "meshca.db"); s.Path() != want {
		t.Errorf("Path() = %s, want %s", s.Path(), want)
	}
	view(t, s, func(tx *store.Tx) error {
		certs, err := tx.CertsFor("web")
		if err != nil {
			t.Fatal(err)
		}
		if want := []store.Cert{c1.Cert, c2.Cert}; !reflect.DeepEqual(certs, want) {
			t.Errorf("CertsFor(web) after reopen = %+v, want %+v", certs, want)
		}
		gotCA, err := tx.CA("r1")
		if err != nil || !reflect.DeepEqual(gotCA, ca) {
			t.Errorf("CA(r1) after reopen = %+v, %v", gotCA, err)
		}
		if set, err := tx.CASet(); err != nil || set.IssuerSerial != "r1" {
			t.Errorf("CASet() after reopen = %+v, %v", set, err)
		}
		if id, err := tx.Identity("web"); err != nil || id.CurrentSerial != "02" {
			t.Errorf("Identity(web) after reopen = %+v, %v", id, err)
		}
		if _, err := tx.Node("n1"); err != nil {
			t.Error(err)
		}
		if _, err := tx.Revocation("01"); err != nil {
			t.Error(err)
		}
		if m, err := tx.LatestMesh(); err != nil || m.Version != 1 {
			t.Errorf("LatestMesh() after reopen = %+v, %v", m, err)
		}
		if seq := tx.LastSeq(); seq != 1 {
			t.Errorf("LastSeq() after reopen = %d, want 1", seq)
		}
		return nil
	})
	// The sequence continues where it stopped.
	ev, err := s.Append(ctx, store.Event{Action: "after.reopen"})
	if err != nil || ev.Seq != 2 {
		t.Errorf("Append after reopen = %+v, %v; want Seq 2", ev, err)
	}
	check(t, s)
}

func TestSecondOpenIsLocked(t *testing.T) {
	_, dir := newStore(t)
	cfg := config(t, dir)
	cfg.LockTimeout = 300 * time.Millisecond
	start := time.Now()
	s2, err := store.Open(cfg)
	elapsed := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("second Open on the same directory succeeded")
	}
	wantErr(t, err, store.ErrLocked)
	if elapsed > cfg.LockTimeout+500*time.Millisecond {
		t.Errorf("second Open took %v, want about %v", elapsed, cfg.LockTimeout)
	}
	for _, want := range []string{"data directory " + dir + " is in use by another meshca process", "300ms", "--data-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestPermissions(t *testing.T) {
	t.Run("created private", func(t *testing.T) {
		s, dir := newStore(t)
		for path, want := range map[string]os.FileMode{dir: 0o700, s.Path(): 0o600} {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("%s has mode %04o, want %04o", path, got, want)
			}
		}
	})
	t.Run("loose directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := store.Open(config(t, dir))
		wantErr(t, err, store.ErrPermission)
		if !strings.Contains(err.Error(), "chmod 700 "+dir) {
			t.Errorf("error %q lacks the chmod 700 hint", err)
		}
	})
	t.Run("loose file", func(t *testing.T) {
		s, dir := newStore(t)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(s.Path(), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := store.Open(config(t, dir))
		wantErr(t, err, store.ErrPermission)
		if !strings.Contains(err.Error(), "chmod 600 "+s.Path()) {
			t.Errorf("error %q lacks the chmod 600 hint", err)
		}
	})
}

// editFile changes a closed store's file directly with bbolt, as a damaged
// or foreign file would look.
func editFile(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestSchema(t *testing.T) {
	t.Run("newer schema refused", func(t *testing.T) {
		s, dir := newStore(t)
		s.Close()
		editFile(t, s.Path(), func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("7"))
		})
		_, err := store.Open(config(t, dir))
		wantErr(t, err, store.ErrSchema)
		if !strings.Contains(err.Error(), "schema version 7") || !strings.Contains(err.Error(), "supports version 2") {
			t.Errorf("error %q does not name both versions", err)
		}
		// Open released the lock after refusing.
		editFile(t, s.Path(), func(tx *bolt.Tx) error {
			if tx.Bucket([]byte("meta")) == nil {
				return errors.New("meta bucket missing")
			}
			return nil
		})
	})
	t.Run("new file gets schema 2", func(t *testing.T) {
		s, _ := newStore(t)
		s.Close()
		editFile(t, s.Path(), func(tx *bolt.Tx) error {
			var v int
			if err := json.Unmarshal(tx.Bucket([]byte("meta")).Get([]byte("schema")), &v); err != nil || v != 2 {
				t.Errorf("schema = %d, %v; want 2", v, err)
			}
			return nil
		})
	})
	t.Run("missing buckets recreated", func(t *testing.T) {
		s, dir := newStore(t)
		s.Close()
		editFile(t, s.Path(), func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("nodes")) })
		s = openCfg(t, config(t, dir))
		update(t, s, audited("node.create", func(tx *store.Tx) error { return tx.PutNode(store.Node{Name: "n"}) }))
		check(t, s)
	})
}
