package main_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readmeBlock returns the shell block of the README between
// <!-- name --> and <!-- /name -->.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- "+name+" -->")
	block, _, ok2 := strings.Cut(rest, "<!-- /"+name+" -->")
	if !ok || !ok2 {
		t.Fatalf("README has no %s block", name)
	}
	block = strings.TrimSpace(block)
	block = strings.TrimPrefix(block, "```sh")
	return strings.TrimSuffix(block, "```")
}

// readmeDir is a directory laid out like the repository for the README's
// commands: bin/meshca and testdata/.
func readmeDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(binary, filepath.Join(dir, "bin", "meshca")); err != nil {
		t.Fatal(err)
	}
	testdata, _ := filepath.Abs(filepath.Join("..", "..", "testdata"))
	if err := os.Symlink(testdata, filepath.Join(dir, "testdata")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestREADMEQuickstart runs the README's quickstart commands as written
// against a server on free ports (`make run` would take 8000 and 6565),
// found through MESHCA_ADMIN as the README says.
func TestREADMEQuickstart(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is needed (make deps installs it)")
	}
	block := readmeBlock(t, "quickstart")
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	dir := readmeDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail\n"+block+"\n")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MESHCA_ADMIN="+srv.admin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("quickstart failed: %v\n%s", err, out)
	}
	for _, want := range []string{"demo/echo.pem: OK", "spiffe://mesh.local/echo", "identity.add"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("quickstart output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "PRIVATE KEY") {
		t.Fatal("the quickstart printed key material")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "bin" && e.Name() != "testdata" && e.Name() != "demo" {
			t.Errorf("the quickstart wrote %s outside demo/", e.Name())
		}
	}
	srv.stop(t)
}
