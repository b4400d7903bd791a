package mesh_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshca/meshca/internal/validate"
	"github.com/meshca/meshca/mesh"
)

// TestGoldenAgentNodes: an agent node gets the same listeners and clusters
// as a plain node, except that every SDS config source names the local
// agent's cluster; the output validates deep and matches its golden file.
func TestGoldenAgentNodes(t *testing.T) {
	m := parse(t, readExample(t, "https-front-proxy"))
	for _, plain := range []mesh.Node{frontNode, sidecarNode("echo")} {
		n := plain
		n.Agent = true
		t.Run(n.Name, func(t *testing.T) {
			res := build(t, m, n)
			for typ, rs := range res.ByType {
				for _, r := range rs {
					if err := validate.Message(r); err != nil {
						t.Errorf("%s %q: %v", typ, cachev3.GetResourceName(r), err)
					}
				}
			}
			got, err := res.YAML()
			if err != nil {
				t.Fatal(err)
			}
			sources := strings.Count(string(got), `"sdsConfig":`)
			agent := strings.Count(string(got), `"clusterName": "`+mesh.AgentSDSCluster+`"`)
			if sources == 0 || agent != sources {
				t.Fatalf("%d SDS config sources, %d of them the agent's cluster", sources, agent)
			}
			// Everything else is the plain node's configuration.
			plainYAML, err := build(t, m, plain).YAML()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(string(plainYAML), `"sdsConfig":`) != sources {
				t.Fatal("the agent node references other secrets than the plain node")
			}
			path := filepath.Join("..", "testdata", "mesh", "golden", "https-front-proxy", n.Name+"-agent.yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./mesh -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the build output (run go test ./mesh -update and review the diff)", path)
			}
		})
	}
}
