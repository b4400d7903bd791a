package app_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
)

// Re-applying the mesh in use stores no new version; a file without
// version: and a file with a bad indentation are refused with the right
// path and line.
func TestMeshApplyCLIFileChecks(t *testing.T) {
	m := startMesh(t, nil)
	file := filepath.Join("..", "..", "testdata", "mesh", "examples", "http-front-proxy.yaml")
	if out := m.mustCLI("mesh", "apply", "-f", file); !strings.Contains(out, "applied mesh version 1") {
		t.Fatalf("first apply:\n%s", out)
	}
	if out := m.mustCLI("mesh", "apply", "-f", file); !strings.Contains(out, "unchanged: this is mesh version 1") {
		t.Fatalf("second apply of the same file:\n%s", out)
	}
	var plan api.MeshPlan
	doc, _ := os.ReadFile(file)
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: string(doc)}, &plan, http.StatusOK)
	if !plan.Unchanged || plan.Version != 1 {
		t.Fatalf("API answer to the same mesh: %+v", plan)
	}
	var hist []api.MeshVersion
	m.admin("GET", api.PathMeshHist, nil, &hist, http.StatusOK)
	if len(hist) != 1 {
		t.Fatalf("history has %d versions after applying one file twice, want 1", len(hist))
	}
	// Rolling back to the version in use is no new version either.
	if out := m.mustCLI("mesh", "apply", "--version", "1"); !strings.Contains(out, "unchanged") {
		t.Fatalf("rollback to the version in use:\n%s", out)
	}

	dir := t.TempDir()
	noVersion := filepath.Join(dir, "no-version.yaml")
	os.WriteFile(noVersion, []byte(strings.Replace(string(doc), "version: 1\n", "", 1)), 0o600)
	if _, stderr, err := m.cli("mesh", "apply", "-f", noVersion); err == nil || !strings.Contains(stderr, `version: missing: start the file with "version: 1"`) {
		t.Fatalf("file without version: err %v, stderr %q", err, stderr)
	}
	badIndent := filepath.Join(dir, "bad-indent.yaml")
	os.WriteFile(badIndent, []byte("version: 1\nservices:\n  - name: echo\n    endpoints:\n      - address: 10.0.0.1\n        port: 80\n       weight: 2\n"), 0o600)
	_, stderr, err := m.cli("mesh", "apply", "-f", badIndent)
	if err == nil || !strings.Contains(stderr, "line 7: did not find expected '-' indicator") {
		t.Fatalf("bad indentation on line 7: err %v, stderr %q", err, stderr)
	}
	m.admin("GET", api.PathMeshHist, nil, &hist, http.StatusOK)
	if len(hist) != 1 {
		t.Fatalf("history has %d versions after refused files, want 1", len(hist))
	}
}
