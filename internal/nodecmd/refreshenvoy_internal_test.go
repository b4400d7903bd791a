package nodecmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/nodeapi"
)

// TestRefreshServersKeepsAnOldDirectorysAdminPort: a node directory from
// before the node file recorded Envoy's admin port gets it back from its
// envoy.yaml (read without Envoy's protos) when a renewal learns new
// replicas, and the rewritten envoy.yaml passes the check it is given.
// A check that fails leaves both files as they were.
func TestRefreshServersKeepsAnOldDirectorysAdminPort(t *testing.T) {
	dir := t.TempDir()
	nf := nodeapi.NodeFile{Server: "meshca.internal:6565", Node: "edge-1", Kind: nodeapi.KindSidecar, TrustDomain: "mesh.local"}
	old := nodeParams(nf, dir)
	old.AdminPort = 19002
	y, err := bootstrap.Envoy(old)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, bootstrap.EnvoyFile), y)
	nodeJSON, err := json.Marshal(nf)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, NodeFile), nodeJSON)
	replicas := []string{"meshca-2.internal:6565"}

	refused := errors.New("refused by the check")
	err = refreshServers(dir, nf, replicas, io.Discard, nil, func([]byte) error { return refused })
	if !errors.Is(err, refused) {
		t.Fatalf("refreshServers with a failing check = %v, want its error", err)
	}
	if got := readFile(t, filepath.Join(dir, bootstrap.EnvoyFile)); !bytes.Equal(got, y) {
		t.Fatalf("a refused envoy.yaml was written:\n%s", got)
	}
	if got := readFile(t, filepath.Join(dir, NodeFile)); !bytes.Equal(got, nodeJSON) {
		t.Fatalf("the node file changed although envoy.yaml was refused:\n%s", got)
	}

	checked := 0
	check := func(y []byte) error { checked++; return envoycheck.Envoy(y) }
	if err := refreshServers(dir, nf, replicas, io.Discard, nil, check); err != nil {
		t.Fatal(err)
	}
	if checked != 1 {
		t.Fatalf("the check ran %d times, want once", checked)
	}
	b, err := envoycheck.ParseEnvoy(readFile(t, filepath.Join(dir, bootstrap.EnvoyFile)))
	if err != nil {
		t.Fatal(err)
	}
	if port := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); port != 19002 {
		t.Fatalf("admin port after the rewrite: %d, want the old envoy.yaml's 19002", port)
	}
	if eps := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints(); len(eps) != 2 {
		t.Fatalf("%d meshca endpoints after the rewrite, want 2", len(eps))
	}
	got, err := readNodeFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.EnvoyAdminPort != 19002 {
		t.Fatalf("node file records admin port %d, want 19002", got.EnvoyAdminPort)
	}
	t.Logf("old directory: admin port %d read back from envoy.yaml and recorded; %d endpoints after the rewrite; a failing check wrote nothing", got.EnvoyAdminPort, 2)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
