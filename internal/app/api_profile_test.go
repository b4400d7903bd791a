package app_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"testing"
)

// TestProfileAdminIssuance profiles meshca while one caller adds
// identities through the admin API, as `meshca-bench -only api` does with
// one caller. It runs only with MESHCA_API_PROFILE set to a file:
//
//	MESHCA_API_PROFILE=/tmp/api.pprof go test -run TestProfileAdminIssuance ./internal/app
//	go tool pprof -top -cum /tmp/api.pprof
func TestProfileAdminIssuance(t *testing.T) {
	out := os.Getenv("MESHCA_API_PROFILE")
	if out == "" {
		t.Skip("profiles only with MESHCA_API_PROFILE=FILE")
	}
	m := startMeshLogged(t, nil, filepath.Join(t.TempDir(), "data"), nil, slog.New(slog.DiscardHandler))
	for i := range 50 {
		m.addIdentity(fmt.Sprintf("warm-%d", i))
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		m.addIdentity(fmt.Sprintf("svc-%d", i))
	}
	pprof.StopCPUProfile()
}
