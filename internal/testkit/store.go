package testkit

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// KEKFile is the key-encryption key's file in a data directory, where
// meshca itself keeps it (app.KEKFile).
const KEKFile = "kek"

// OpenStore opens a real store on dir (made 0700 if missing), sealed with
// dir's key-encryption key (made if missing), and closes it when the test
// ends; closing it earlier is allowed. cfg's Dir and Sealer are set here,
// its other fields (a clock, a fault hook) are the caller's. On a data
// directory meshca used, stop meshca first: the store is locked while open.
func OpenStore(tb testing.TB, dir string, cfg store.Config) *store.Store {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	sealer, err := seal.LoadOrCreate(filepath.Join(dir, KEKFile))
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Dir, cfg.Sealer = dir, sealer
	st, err := store.Open(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}
