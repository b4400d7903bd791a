package nodecmd

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// agentOnly lists, by import path prefix, what the node agent's binary must
// not link. Each adds code the agent's process maps and touches.
var agentOnly = []struct {
	why      string
	prefixes []string
}{
	{"the server's CA, store and API, and the libraries only they need", []string{
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
	}},
	{"go-control-plane's xDS server, snapshot cache and resource helpers, and the xDS services they register (the agent serves SDS with its own)", []string{
		"github.com/envoyproxy/go-control-plane/pkg/server",
		"github.com/envoyproxy/go-control-plane/pkg/cache",
		"github.com/envoyproxy/go-control-plane/pkg/resource",
		"github.com/envoyproxy/go-control-plane/envoy/service/cluster",
		"github.com/envoyproxy/go-control-plane/envoy/service/endpoint",
		"github.com/envoyproxy/go-control-plane/envoy/service/listener",
		"github.com/envoyproxy/go-control-plane/envoy/service/route",
		"github.com/envoyproxy/go-control-plane/envoy/service/runtime",
		"github.com/envoyproxy/go-control-plane/ratelimit",
	}},
	{"Envoy's bootstrap and config protos and the YAML libraries (envoy.yaml is rendered from templates; the agent serves only secrets), and meshca's packages that bring them", []string{
		"github.com/envoyproxy/go-control-plane/envoy/config/bootstrap",
		"github.com/envoyproxy/go-control-plane/envoy/config/listener",
		"github.com/envoyproxy/go-control-plane/envoy/config/cluster",
		"github.com/envoyproxy/go-control-plane/envoy/config/route",
		"github.com/envoyproxy/go-control-plane/envoy/extensions/filters",
		"go.yaml.in/yaml",
		"gopkg.in/yaml",
		"sigs.k8s.io/yaml",
		"github.com/meshca/meshca/mesh",
		"github.com/meshca/meshca/internal/bootstrap/envoycheck",
	}},
}

// TestAgentBinaryLinksOnlyTheAgent: cmd/meshca-agent, built from this
// package, links nothing of agentOnly. Each failure names an import chain
// that brings the package in.
func TestAgentBinaryLinksOnlyTheAgent(t *testing.T) {
	const root = "github.com/meshca/meshca/cmd/meshca-agent"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", root).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	g := importGraph{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		g[f[0]] = f[1:]
	}
	prefixes := 0
	for _, group := range agentOnly {
		prefixes += len(group.prefixes)
		for _, chain := range forbiddenPaths(g, root, group.prefixes) {
			t.Errorf("cmd/meshca-agent links %s, one of %s: %s", chain[len(chain)-1], group.why, strings.Join(chain, " -> "))
		}
	}
	t.Logf("cmd/meshca-agent links %d packages, none under %d forbidden prefixes", len(g), prefixes)
}

// importGraph maps a package to the packages it imports.
type importGraph map[string][]string

// forbiddenPaths returns, for each package under one of the forbidden
// prefixes that root reaches, one shortest import chain from root to it.
func forbiddenPaths(g importGraph, root string, forbidden []string) [][]string {
	isForbidden := func(p string) bool {
		return slices.ContainsFunc(forbidden, func(f string) bool { return p == f || strings.HasPrefix(p, f+"/") })
	}
	parent := map[string]string{root: ""}
	queue := []string{root}
	var found [][]string
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if isForbidden(p) {
			var chain []string
			for q := p; q != ""; q = parent[q] {
				chain = append(chain, q)
			}
			slices.Reverse(chain)
			found = append(found, chain)
			continue
		}
		for _, imp := range g[p] {
			if _, seen := parent[imp]; !seen {
				parent[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	return found
}

// TestForbiddenPathsFindsEachRoute: the search names the shortest chain to
// each forbidden package, and matches whole path elements only.
func TestForbiddenPathsFindsEachRoute(t *testing.T) {
	g := importGraph{
		"main":        {"agent", "nodecmd"},
		"agent":       {"cache/v3", "sds"},
		"cache/v3":    {"listener/v3"},
		"sds":         {"tls/v3"},
		"nodecmd":     {"bootstrap"},
		"bootstrap":   {"tls/v3"},
		"tls/v3":      {"core/v3"},
		"listener/v3": {"core/v3"},
	}
	if got := forbiddenPaths(g, "main", []string{"listener"}); len(got) != 1 || strings.Join(got[0], " ") != "main agent cache/v3 listener/v3" {
		t.Fatalf("got %v, want the chain main agent cache/v3 listener/v3", got)
	}
	if got := forbiddenPaths(g, "main", []string{"listener", "tls"}); len(got) != 2 || strings.Join(got[1], " ") != "main agent sds tls/v3" {
		t.Fatalf("got %v, want listener/v3 then tls/v3 by main agent sds tls/v3", got)
	}
	if got := forbiddenPaths(g, "main", []string{"listen"}); len(got) != 0 {
		t.Fatalf("prefix %q matched %v: only whole path elements count", "listen", got)
	}
}
