package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

var ctx = context.Background()

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newSealer(t testing.TB, fill byte) *seal.Sealer {
	t.Helper()
	s, err := seal.New(bytes.Repeat([]byte{fill}, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// config is the configuration used by the tests: a fixed KEK and a fake
// clock, so stored times are predictable.
func config(t testing.TB, dir string) store.Config {
	return store.Config{
		Dir:         dir,
		Sealer:      newSealer(t, 0x42),
		LockTimeout: 200 * time.Millisecond,
		Clock:       clock.NewFake(t0),
	}
}

func openCfg(t testing.TB, cfg store.Config) *store.Store {
	t.Helper()
	s, err := store.Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newStore opens a store in a fresh data directory and returns it with the
// directory.
func newStore(t testing.TB) (*store.Store, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	return openCfg(t, config(t, dir)), dir
}

func update(t testing.TB, s *store.Store, fn func(*store.Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func view(t testing.TB, s *store.Store, fn func(*store.Tx) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

func check(t testing.TB, s *store.Store) {
	t.Helper()
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// audited returns a write function that also appends an audit event, as
// every real caller must.
func audited(action string, fn func(*store.Tx) error) func(*store.Tx) error {
	return func(tx *store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{Action: action})
		return err
	}
}

func testCert(identity, serial string, notBefore time.Time) store.Credential {
	return store.Credential{
		Cert: store.Cert{
			Serial:       serial,
			Identity:     identity,
			DER:          []byte("der-" + serial),
			Chain:        [][]byte{[]byte("intermediate")},
			IssuerSerial: "ca1",
			NotBefore:    notBefore,
			NotAfter:     notBefore.Add(time.Hour),
			IssuedAt:     notBefore.Add(time.Minute),
			KeyHeld:      true, // what a read reports for a stored key
		},
		Key: []byte("key-of-" + serial),
	}
}

// putCert stores c with its key.
func putCert(tx *store.Tx, c store.Credential) error { return tx.PutCert(c.Cert, c.Key) }

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

func serials(certs []store.Cert) string {
	var b bytes.Buffer
	for _, c := range certs {
		fmt.Fprintf(&b, "%s ", c.Serial)
	}
	return b.String()
}
