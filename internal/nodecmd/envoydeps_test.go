package nodecmd

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// neverLinked are the import paths (and their subpackages) the node
// agent's binary must not link at all: Envoy's bootstrap protos (which
// pull in nearly all of Envoy's config protos), the YAML libraries, and
// meshca's packages that bring them (the mesh model, the envoy.yaml
// checker). The agent writes envoy.yaml from templates; it parses none.
var neverLinked = []string{
	"github.com/envoyproxy/go-control-plane/envoy/config/bootstrap",
	"go.yaml.in/yaml",
	"gopkg.in/yaml",
	"sigs.k8s.io/yaml",
	"github.com/meshca/meshca/mesh",
	"github.com/meshca/meshca/internal/bootstrap/envoycheck",
}

// envoyConfig are Envoy's listener, cluster and route protos and the HTTP
// connection manager: what the agent, which serves Secrets only, has no
// use for. They may reach it only through viaSnapshotCache.
var envoyConfig = []string{
	"github.com/envoyproxy/go-control-plane/envoy/config/listener",
	"github.com/envoyproxy/go-control-plane/envoy/config/cluster",
	"github.com/envoyproxy/go-control-plane/envoy/config/route",
	"github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager",
}

// viaSnapshotCache are go-control-plane's snapshot cache and xDS server,
// which internal/agent's SDS server still uses: they link every xDS
// resource type. Once the agent serves SDS without them, envoyConfig is
// not linked at all.
const viaSnapshotCache = "github.com/envoyproxy/go-control-plane/pkg/"

// TestAgentBinaryLinksNoEnvoyConfig: cmd/meshca-agent links none of
// neverLinked, and reaches envoyConfig only through go-control-plane's
// snapshot cache and server. Each failure names the import chain.
func TestAgentBinaryLinksNoEnvoyConfig(t *testing.T) {
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
	never := func(string) bool { return false }
	bad := forbiddenPaths(g, root, neverLinked, never)
	bad = append(bad, forbiddenPaths(g, root, envoyConfig, func(p string) bool { return strings.HasPrefix(p, viaSnapshotCache) })...)
	for _, chain := range bad {
		t.Errorf("cmd/meshca-agent links %s: %s", chain[len(chain)-1], strings.Join(chain, " -> "))
	}
	if len(bad) > 0 {
		return
	}
	cached := forbiddenPaths(g, root, envoyConfig, never)
	t.Logf("cmd/meshca-agent links %d packages: none of %d forbidden prefixes; %d of Envoy's listener, cluster, route and HTTP connection manager packages, only through go-control-plane's snapshot cache or server",
		len(g), len(neverLinked), len(cached))
}

// importGraph maps a package to the packages it imports.
type importGraph map[string][]string

// forbiddenPaths returns, for each package under one of the forbidden
// prefixes that root reaches without passing through a package for which
// skip is true, one shortest import chain from root to it.
func forbiddenPaths(g importGraph, root string, forbidden []string, skip func(string) bool) [][]string {
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
			if _, seen := parent[imp]; seen || skip(imp) {
				continue
			}
			parent[imp] = p
			queue = append(queue, imp)
		}
	}
	return found
}

// TestForbiddenPathsFindsEachRoute: the search finds a forbidden package
// behind any path that avoids the skipped packages, and only then.
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
	skipCache := func(p string) bool { return p == "cache/v3" }
	if got := forbiddenPaths(g, "main", []string{"listener"}, skipCache); len(got) != 0 {
		t.Fatalf("found %v, though listener is reached only through the skipped cache", got)
	}
	got := forbiddenPaths(g, "main", []string{"listener"}, func(string) bool { return false })
	if len(got) != 1 || strings.Join(got[0], " ") != "main agent cache/v3 listener/v3" {
		t.Fatalf("without skipping: %v, want the chain main agent cache/v3 listener/v3", got)
	}
	g["bootstrap"] = append(g["bootstrap"], "listener/v3")
	got = forbiddenPaths(g, "main", []string{"listener"}, skipCache)
	if len(got) != 1 || strings.Join(got[0], " ") != "main nodecmd bootstrap listener/v3" {
		t.Fatalf("a second route around the cache: %v, want main nodecmd bootstrap listener/v3", got)
	}
	if got := forbiddenPaths(g, "main", []string{"listen"}, func(string) bool { return false }); len(got) != 0 {
		t.Fatalf("prefix %q matched %v: only whole path elements count", "listen", got)
	}
}
