package seal_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/seal"
)

func TestSealOpen(t *testing.T) {
	s, err := seal.LoadOrCreate(filepath.Join(t.TempDir(), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("private key bytes")
	sealed, err := s.Seal(secret, []byte("echo|01"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("sealed output contains the plaintext")
	}
	got, err := s.Open(sealed, []byte("echo|01"))
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := s.Open(sealed, []byte("other|01")); !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("Open with another record's aad: err = %v, want ErrOpen", err)
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := s.Open(sealed, []byte("echo|01")); !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("Open of altered data: err = %v, want ErrOpen", err)
	}
	if _, err := s.Open(nil, nil); !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("Open(nil): err = %v", err)
	}
}

func TestLoadOrCreatePersistsKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek")
	a, err := seal.LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("kek mode = %04o, want 0600", fi.Mode().Perm())
	}
	sealed, _ := a.Seal([]byte("x"), nil)
	b, err := seal.LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(sealed, nil); err != nil {
		t.Fatalf("reloaded key does not open: %v", err)
	}
}

func TestLoadOrCreateRefusesLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek")
	if _, err := seal.LoadOrCreate(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := seal.LoadOrCreate(path)
	if !errors.Is(err, seal.ErrPermission) {
		t.Fatalf("err = %v, want ErrPermission", err)
	}
	if !strings.Contains(err.Error(), "chmod 600 "+path) {
		t.Fatalf("error does not say how to fix it: %v", err)
	}
}

func TestLoadOrCreateRefusesTruncatedKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := seal.LoadOrCreate(path); !errors.Is(err, seal.ErrKeyFile) {
		t.Fatalf("err = %v, want ErrKeyFile", err)
	}
}
