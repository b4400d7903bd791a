package bench

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testkit"
)

// TestMain lets the test binary serve as the harness's workers.
func TestMain(m *testing.M) {
	if worker, err := WorkerFromEnv(context.Background(), os.Args[1:]); worker {
		if err != nil {
			os.Stderr.WriteString("worker: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// buildMeshca builds the meshca binary once per test run.
func buildMeshca(t *testing.T) string {
	t.Helper()
	bin, err := testkit.BuildMeshca(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// testEnv is an Env in a temp directory whose workers are this test
// binary (see TestMain), logging to log.
func testEnv(t *testing.T, log io.Writer) *Env {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Config: Config{Self: self, Log: log}, Dir: t.TempDir()}
}

// TestQuick runs every section at its smoke size: each must finish and
// report rows with figures. No timing is asserted.
func TestQuick(t *testing.T) {
	meshca := buildMeshca(t)
	agent := filepath.Join(filepath.Dir(meshca), "meshca-agent")
	if out, err := exec.Command("go", "build", "-o", agent, "github.com/meshca/meshca/cmd/meshca-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build meshca-agent: %v\n%s", err, out)
	}
	for _, s := range Sections {
		t.Run(s.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var log strings.Builder
			out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
			self, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			err = Run(ctx, Config{Meshca: meshca, Agent: agent, Self: self, Out: out, Quick: true, Only: []string{s.Name}, WorkDir: t.TempDir(), Log: &log})
			if err != nil {
				t.Fatalf("%v\n%s", err, log.String())
			}
			md, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(md), "## "+s.Title) || !strings.Contains(string(md), "| figure |") {
				t.Fatalf("report lacks the section's table:\n%s", md)
			}
		})
	}
}

// TestSeedDir seeds a data directory and starts meshca on it: the nodes'
// credentials must chain to the seeded bundle.
func TestSeedDir(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	seeded, err := SeedDir(ctx, dir, Seed{Identities: 5, Nodes: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(seeded.Nodes) != 3 || seeded.Nodes[2].Identity != "spiffe://mesh.local/id-2" || len(seeded.BundlePEM) == 0 {
		t.Fatalf("seeded %+v", seeded.Nodes)
	}
	path := filepath.Join(t.TempDir(), "nodes.jsonl")
	if err := WriteNodes(path, seeded.Nodes); err != nil {
		t.Fatal(err)
	}
	back, err := ReadNodes(path)
	if err != nil || len(back) != 3 || back[1] != seeded.Nodes[1] {
		t.Fatalf("read back %d nodes: %v", len(back), err)
	}
	env := &Env{Config: Config{Meshca: buildMeshca(t), Log: io.Discard}}
	m, _, err := StartMeshca(ctx, env, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	resp, err := http.Get("http://" + m.Admin + "/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "node-2") {
		t.Fatalf("meshca does not list the seeded nodes: %s", body)
	}
}
