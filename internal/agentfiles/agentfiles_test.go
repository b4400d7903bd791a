package agentfiles_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/meshca/meshca/internal/agentfiles"
)

func TestWriteReplacesFilesWithModes(t *testing.T) {
	dir := t.TempDir()
	for i, v := range []string{"one", "two"} {
		if err := agentfiles.Write(dir, "web", []byte("cert "+v), []byte("key "+v), []byte("bundle "+v)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		cert, key, bundle := agentfiles.Paths(dir, "web")
		for path, want := range map[string]struct {
			data string
			mode os.FileMode
		}{cert: {"cert " + v, 0o644}, key: {"key " + v, 0o600}, bundle: {"bundle " + v, 0o644}} {
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want.data || fi.Mode().Perm() != want.mode {
				t.Errorf("%s: %q %v, want %q %v", path, got, fi.Mode().Perm(), want.data, want.mode)
			}
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "web"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("identity directory mode %v, want 0700", fi.Mode().Perm())
	}
	left, _ := filepath.Glob(filepath.Join(dir, "web", ".*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestWriteRefusesPathNames(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"", ".", "..", "../x", "a/../b", "a//b", "/a", "a/", `a\b`} {
		if err := agentfiles.Write(dir, name, nil, nil, nil); !errors.Is(err, agentfiles.ErrInvalidIdentity) {
			t.Errorf("Write(%q) = %v, want ErrInvalidIdentity", name, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(dir)); len(entries) != 1 {
		t.Errorf("something was written outside the directory: %v", entries)
	}
}

func TestInstance(t *testing.T) {
	if got := agentfiles.Instance("web"); got != "meshca-web" {
		t.Fatalf("Instance(web) = %q", got)
	}
}

func TestWriteNestedAndRemove(t *testing.T) {
	dir := t.TempDir()
	if err := agentfiles.Write(dir, "team/web", []byte("c"), []byte("k"), []byte("b")); err != nil {
		t.Fatal(err)
	}
	_, key, _ := agentfiles.Paths(dir, "team/web")
	if key != filepath.Join(dir, "team", "web", agentfiles.KeyFile) {
		t.Fatalf("key of team/web at %s", key)
	}
	fi, err := os.Stat(key)
	if err != nil || fi.Mode().Perm() != agentfiles.KeyMode {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if err := agentfiles.Remove(dir, "team/web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "team", "web")); !os.IsNotExist(err) {
		t.Fatalf("team/web still there: %v", err)
	}
	if err := agentfiles.Remove(dir, "../x"); !errors.Is(err, agentfiles.ErrInvalidIdentity) {
		t.Fatalf("Remove(../x) = %v", err)
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	if got, err := agentfiles.List(filepath.Join(dir, "missing")); err != nil || got != nil {
		t.Fatalf("List(missing) = %v, %v", got, err)
	}
	for _, id := range []string{"web", "team/api", "db"} {
		if err := agentfiles.Write(dir, id, []byte("c"), []byte("k"), []byte("b")); err != nil {
			t.Fatal(err)
		}
	}
	if err := agentfiles.Remove(dir, "db"); err != nil {
		t.Fatal(err)
	}
	got, err := agentfiles.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"team/api", "web"}; !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
}
