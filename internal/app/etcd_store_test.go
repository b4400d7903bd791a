package app_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

// TestStateOnEtcd starts meshca on an etcd store, stops it, and starts it
// again from another data directory holding only the same kek: what the
// first one recorded is there, because the state lives in etcd.
func TestStateOnEtcd(t *testing.T) {
	e := testkit.StartEtcd(t)
	onEtcd := func(c *config.Config) {
		c.Store.Etcd = config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/meshca-test"}
	}
	first := filepath.Join(t.TempDir(), "a")
	m := startMeshIn(t, nil, first, onEtcd)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "web", TTL: "1h"}, nil, http.StatusCreated)
	m.stop()
	if _, err := os.Stat(filepath.Join(first, "meshca.db")); !os.IsNotExist(err) {
		t.Fatalf("meshca on etcd wrote a bbolt file: %v", err)
	}

	second := filepath.Join(t.TempDir(), "b")
	if err := os.MkdirAll(second, 0o700); err != nil {
		t.Fatal(err)
	}
	kek, err := os.ReadFile(filepath.Join(first, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(second, "kek"), kek, 0o600); err != nil {
		t.Fatal(err)
	}
	m2 := startMeshIn(t, nil, second, onEtcd)
	var id api.Identity
	m2.admin("GET", api.PathIdentities+"/web", nil, &id, http.StatusOK)
	if id.Name != "web" || id.Cert == nil {
		t.Fatalf("identity on the second start: %+v", id)
	}
}
