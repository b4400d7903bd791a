package nodecmd_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/nodecmd"
)

// TestExecuteAgentIsMeshcaAgent: meshca-agent takes the flags of meshca
// agent, and names itself in its errors.
func TestExecuteAgentIsMeshcaAgent(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := nodecmd.ExecuteAgent(context.Background(), "meshca-agent", []string{"--data-dir", t.TempDir()}, &stdout, &stderr)
	if err == nil || stderr.String() != "meshca-agent: --node and --data-dir are required\n" {
		t.Fatalf("err %v, stderr %q", err, stderr.String())
	}
	stdout.Reset()
	if err := nodecmd.ExecuteAgent(context.Background(), "meshca-agent", []string{"--help"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout.String(), "Joins meshca once") || !strings.Contains(stdout.String(), "meshca-agent --server HOST:PORT") {
		t.Fatalf("meshca-agent --help:\n%s", stdout.String())
	}
	agent := nodecmd.Agent(nodecmd.AgentConfig{})
	for _, name := range []string{"server", "node", "token-file", "ca-sha256", "ca-file", "data-dir", "sds-socket", "workload-socket",
		"write-files", "envoy-admin-port", "identity-poll"} {
		if agent.Flags().Lookup(name) == nil || !strings.Contains(stdout.String(), "--"+name+" ") {
			t.Errorf("meshca agent or meshca-agent --help lacks --%s", name)
		}
	}
}
