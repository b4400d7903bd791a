package bootstrap_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/mesh"
)

// TestEnvoyAgentSDS: with AgentSDS, envoy.yaml declares the node agent's
// cluster on the socket's pipe, speaking HTTP/2, validates deep, and
// matches its golden file; a relative socket path is refused.
func TestEnvoyAgentSDS(t *testing.T) {
	p := goldenParams()
	p.AgentSDS = "/run/meshca-agent/sds.sock"
	got, err := bootstrap.Envoy(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoycheck.ParseEnvoy(got)
	if err != nil {
		t.Fatalf("ParseEnvoy(generated) = %v", err)
	}
	var found bool
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != mesh.AgentSDSCluster {
			continue
		}
		found = true
		eps := c.GetLoadAssignment().GetEndpoints()
		if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
			t.Fatalf("%s has %d endpoints", mesh.AgentSDSCluster, len(eps))
		}
		if pipe := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe(); pipe.GetPath() != p.AgentSDS {
			t.Fatalf("%s points at pipe %q, want %q", mesh.AgentSDSCluster, pipe.GetPath(), p.AgentSDS)
		}
		if _, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; !ok {
			t.Fatalf("%s does not speak HTTP/2 (gRPC needs it)", mesh.AgentSDSCluster)
		}
	}
	if !found {
		t.Fatalf("no %s cluster in envoy.yaml", mesh.AgentSDSCluster)
	}
	path := filepath.Join(goldenDir, "envoy-agent.yaml")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("envoy.yaml with AgentSDS differs from %s (run go test -update if the change is intended)\n--- got\n%s", path, got)
	}

	p.AgentSDS = "run/sds.sock"
	if _, err := bootstrap.Envoy(p); !errors.Is(err, bootstrap.ErrInvalidParams) {
		t.Fatalf("relative AgentSDS: err %v, want ErrInvalidParams", err)
	}
}
