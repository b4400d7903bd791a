package cli_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/config"
)

// TestServerEtcdFlags checks that --etcd-endpoints and --etcd-prefix reach
// the server's configuration over the file's store.etcd, and that a bad
// endpoint is refused before the server runs, naming the key.
func TestServerEtcdFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "meshca.yaml")
	yaml := "store:\n  etcd:\n    endpoints: [10.0.0.9:2379]\n    prefix: /from-file\n    dial_timeout: 2s\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		args          []string
		wantEndpoints []string
		wantPrefix    string
		wantErr       string
	}{
		{name: "no flags: bbolt", args: nil, wantPrefix: "/meshca"},
		{name: "file alone", args: []string{"--config", file}, wantEndpoints: []string{"10.0.0.9:2379"}, wantPrefix: "/from-file"},
		{
			name:          "flags over the file",
			args:          []string{"--config", file, "--etcd-endpoints", "127.0.0.1:2379,127.0.0.1:22379", "--etcd-prefix", "/ha"},
			wantEndpoints: []string{"127.0.0.1:2379", "127.0.0.1:22379"}, wantPrefix: "/ha",
		},
		{name: "prefix flag keeps the file's endpoints", args: []string{"--config", file, "--etcd-prefix", "/other"}, wantEndpoints: []string{"10.0.0.9:2379"}, wantPrefix: "/other"},
		{name: "bad endpoint", args: []string{"--etcd-endpoints", "http://127.0.0.1:2379"}, wantErr: `store.etcd.endpoints: "http://127.0.0.1:2379" is not HOST:PORT`},
		{name: "bad prefix", args: []string{"--etcd-endpoints", "127.0.0.1:2379", "--etcd-prefix", "meshca"}, wantErr: `store.etcd.prefix: "meshca"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *config.Config
			var errb bytes.Buffer
			err := cli.Execute(context.Background(), cli.Config{
				Stdout: &bytes.Buffer{}, Stderr: &errb,
				Server: func(_ context.Context, c config.Config, _ *slog.Logger) error { got = &c; return nil },
			}, append([]string{"server", "--data-dir", t.TempDir()}, tt.args...))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(errb.String(), tt.wantErr) || got != nil {
					t.Fatalf("err = %v, stderr = %q, server ran: %v; want %q", err, errb.String(), got != nil, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("server: %v (%s)", err, errb.String())
			}
			if e := got.Store.Etcd; !slices.Equal(e.Endpoints, tt.wantEndpoints) || e.Prefix != tt.wantPrefix {
				t.Fatalf("store.etcd = %+v, want endpoints %v prefix %s", e, tt.wantEndpoints, tt.wantPrefix)
			}
		})
	}
}

// TestStoreMigrateFlags checks that store migrate hands the data directory
// and the etcd flags to the migration, and refuses to run without
// endpoints.
func TestStoreMigrateFlags(t *testing.T) {
	var got *config.Config
	migrate := func(_ context.Context, c config.Config, out io.Writer) error { got = &c; return nil }
	var errb bytes.Buffer
	err := cli.Execute(context.Background(), cli.Config{Stdout: &bytes.Buffer{}, Stderr: &errb, Migrate: migrate},
		[]string{"store", "migrate", "--data-dir", "/var/lib/meshca", "--etcd-endpoints", "127.0.0.1:2379", "--etcd-prefix", "/prod"})
	if err != nil {
		t.Fatalf("store migrate: %v (%s)", err, errb.String())
	}
	if got.DataDir != "/var/lib/meshca" || !slices.Equal(got.Store.Etcd.Endpoints, []string{"127.0.0.1:2379"}) || got.Store.Etcd.Prefix != "/prod" {
		t.Fatalf("migration got data_dir %q, store.etcd %+v", got.DataDir, got.Store.Etcd)
	}
	got = nil
	errb.Reset()
	err = cli.Execute(context.Background(), cli.Config{Stdout: &bytes.Buffer{}, Stderr: &errb, Migrate: migrate}, []string{"store", "migrate", "--data-dir", "x"})
	if err == nil || got != nil || !strings.Contains(errb.String(), "--etcd-endpoints is required") {
		t.Fatalf("store migrate without endpoints: %v, ran %v, stderr %q", err, got != nil, errb.String())
	}
}
