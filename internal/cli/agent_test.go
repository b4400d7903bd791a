package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/nodeapi"
)

// TestAgentCommandErrors: what meshca agent refuses before it contacts
// meshca, each with what to do.
func TestAgentCommandErrors(t *testing.T) {
	empty := t.TempDir()
	other := t.TempDir()
	nf, _ := json.Marshal(nodeapi.NodeFile{Server: "127.0.0.1:1", Node: "web-2", TrustDomain: "mesh.local"})
	if err := os.WriteFile(filepath.Join(other, "meshca-node.json"), nf, 0o600); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("tok"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no node", []string{"agent", "--data-dir", empty}, "--node and --data-dir are required"},
		{"first start without a token", []string{"agent", "--node", "web-1", "--data-dir", empty, "--server", "127.0.0.1:1"}, "the first start needs --server and --token-file"},
		{"first start without a pin", []string{"agent", "--node", "web-1", "--data-dir", empty, "--server", "127.0.0.1:1", "--token-file", token}, "exactly one of --ca-sha256"},
		{"another node's directory", []string{"agent", "--node", "web-1", "--data-dir", other}, `holds the credentials of node "web-2", not "web-1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := run(nil, tc.args...)
			if err == nil || !strings.Contains(err.Error()+stderr, tc.want) {
				t.Fatalf("meshca %v: err %v, stderr %q; want %q", tc.args, err, stderr, tc.want)
			}
		})
	}
}
