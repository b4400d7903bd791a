package agent_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentLinksNoXDSServer: the agent's runtime links neither
// go-control-plane's xDS server and snapshot cache nor the Envoy config
// protos of listeners, routes and clusters: it serves only secrets. The
// node agent's binary then carries only what the node commands add.
func TestAgentLinksNoXDSServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/meshca/meshca/internal/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/envoyproxy/go-control-plane/pkg/server",
		"github.com/envoyproxy/go-control-plane/pkg/cache",
		"github.com/envoyproxy/go-control-plane/pkg/resource",
		"github.com/envoyproxy/go-control-plane/envoy/config/listener",
		"github.com/envoyproxy/go-control-plane/envoy/config/route",
		"github.com/envoyproxy/go-control-plane/envoy/config/cluster",
		"github.com/envoyproxy/go-control-plane/envoy/config/bootstrap",
		"github.com/envoyproxy/go-control-plane/envoy/extensions/filters",
		"github.com/meshca/meshca/mesh",
	}
	deps := strings.Fields(string(out))
	var bad []string
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				bad = append(bad, d)
			}
		}
	}
	if len(bad) > 0 {
		t.Fatalf("internal/agent links %d packages it should not (find who imports them with go list -deps -f '{{.ImportPath}}: {{.Imports}}'):\n%s", len(bad), strings.Join(bad, "\n"))
	}
	t.Logf("internal/agent links %d packages, no xDS server, cache, or Envoy config beyond core and secrets", len(deps))
}
