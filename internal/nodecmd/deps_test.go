package nodecmd

import (
	"os/exec"
	"strings"
	"testing"
)

// serverOnly are the import paths (and their subpackages) the node agent
// binary must not link: the server's CA, store and API, and the libraries
// only they need. Each one adds code the agent's process maps and touches.
var serverOnly = []string{
	"github.com/cloudflare/cfssl",
	"github.com/zmap/zlint",
	"go.etcd.io/bbolt",
	"go.etcd.io/etcd",
	"github.com/prometheus",
	"github.com/meshca/meshca/ca",
	"github.com/meshca/meshca/xds",
	"github.com/meshca/meshca/internal/app",
	"github.com/meshca/meshca/internal/admin",
	"github.com/meshca/meshca/internal/authority",
	"github.com/meshca/meshca/internal/cli",
	"github.com/meshca/meshca/internal/config",
	"github.com/meshca/meshca/internal/nodeconfig",
	"github.com/meshca/meshca/internal/registry",
	"github.com/meshca/meshca/internal/store",
	// go-control-plane's xDS server and snapshot cache (the agent serves
	// SDS with its own), and the other xDS services they register.
	"github.com/envoyproxy/go-control-plane/pkg/server",
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3",
	"github.com/envoyproxy/go-control-plane/envoy/service/cluster",
	"github.com/envoyproxy/go-control-plane/envoy/service/endpoint",
	"github.com/envoyproxy/go-control-plane/envoy/service/listener",
	"github.com/envoyproxy/go-control-plane/envoy/service/route",
	"github.com/envoyproxy/go-control-plane/envoy/service/runtime",
	"github.com/envoyproxy/go-control-plane/ratelimit",
}

// TestAgentBinaryHasNoServerDependency: cmd/meshca-agent, built from this
// package, links none of the server's packages.
func TestAgentBinaryHasNoServerDependency(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/meshca/meshca/cmd/meshca-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	var bad []string
	for _, d := range deps {
		for _, s := range serverOnly {
			if d == s || strings.HasPrefix(d, s+"/") {
				bad = append(bad, d)
			}
		}
	}
	if len(bad) > 0 {
		t.Fatalf("cmd/meshca-agent links %d of the server's packages (find who imports them with go list -deps -f '{{.ImportPath}}: {{.Imports}}'):\n%s", len(bad), strings.Join(bad, "\n"))
	}
	t.Logf("cmd/meshca-agent links %d packages, none of the server's", len(deps))
}
