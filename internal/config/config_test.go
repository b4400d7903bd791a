package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/config"
)

func TestDefaultIsValid(t *testing.T) {
	if err := config.Default().Validate(); err != nil {
		t.Fatalf("embedded default does not validate: %v", err)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // substring; empty means valid
		check   func(t *testing.T, c config.Config)
	}{
		{
			name: "overrides keep other defaults",
			yaml: "trust_domain: corp.internal\nca:\n  default_leaf_ttl: 30m\n",
			check: func(t *testing.T, c config.Config) {
				if c.TrustDomain != "corp.internal" || c.CA.DefaultLeafTTL.D() != 30*time.Minute {
					t.Fatalf("got %+v", c)
				}
				if c.Admin.Listen != "127.0.0.1:8000" || c.CA.RootTTL.D() != 87600*time.Hour {
					t.Fatalf("defaults lost: %+v", c)
				}
			},
		},
		{name: "empty file", yaml: "", check: func(t *testing.T, c config.Config) {
			if c.DataDir != "meshca-data" {
				t.Fatalf("data_dir = %q", c.DataDir)
			}
		}},
		{name: "unknown top-level key", yaml: "trust_domian: x\n", wantErr: `line 1: unknown key "trust_domian"`},
		{name: "unknown nested key", yaml: "ca:\n  root_tll: 1h\n", wantErr: `line 2: unknown key "ca.root_tll"`},
		{name: "bad duration", yaml: "ca:\n  root_ttl: ten years\n", wantErr: `"ten years" is not a duration`},
		{name: "wrong type", yaml: "admin: 8000\n", wantErr: "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, config.ErrInvalid) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestValidateNamesEveryBadKey(t *testing.T) {
	c := config.Default()
	c.TrustDomain = ""
	c.Admin.Listen = "8000"
	c.Log.Format = "xml"
	c.CA.KeyAlgorithm = "dsa"
	c.CA.IntermediateTTL = c.CA.RootTTL
	c.CA.DefaultLeafTTL = config.Duration(time.Minute)
	c.Store.LockTimeout = 0
	err := c.Validate()
	if !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	for _, key := range []string{"trust_domain:", "admin.listen:", "log.format:", "ca.key_algorithm:", "ca.intermediate_ttl:", "ca.default_leaf_ttl:", "store.lock_timeout:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.yaml")
	if err := os.WriteFile(path, []byte("data_dir: /var/lib/meshca\nlog:\n  format: json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/var/lib/meshca" || c.Log.Format != "json" {
		t.Fatalf("got %+v", c)
	}
	if _, err := config.Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file: no error")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("trust_domain: corp.internal\nca:\n  default_leaf_ttl: 30m\n"))
	f.Add([]byte("admin: {listen: '[::1]:8000'}"))
	f.Add([]byte("ca:\n  root_ttl: -5h\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse(data)
		if err != nil {
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		_ = c.Validate()
	})
}
