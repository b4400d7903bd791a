package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/cli"
)

// syncBuffer is an io.Writer safe for a command's output and a test
// reading it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runAgentCommand registers a grpc agent node holding ids and runs
// `meshca agent` for it (the CLI, in this process) until the test ends.
// It returns the node's data directory.
func (m *mesh) runAgentCommand(name string, ids ...string) string {
	t := m.t
	t.Helper()
	var tok api.JoinToken
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: name, Kind: "grpc", Identities: ids, Agent: true}, &tok, http.StatusCreated)
	base := t.TempDir()
	tokenFile := filepath.Join(base, "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "node")
	_, port, _ := net.SplitHostPort(m.app.XDS)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	out := &syncBuffer{}
	go func() {
		done <- cli.Execute(ctx, cli.Config{Stdout: out, Stderr: out, Getenv: func(string) string { return "" }}, []string{
			"agent", "--server", "localhost:" + port, "--node", name, "--token-file", tokenFile,
			"--ca-sha256", tok.CASHA256, "--data-dir", dir,
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("meshca agent %s: %v\n%s", name, err, out.String())
			}
		case <-time.After(20 * time.Second):
			t.Errorf("meshca agent %s did not stop", name)
		}
	})
	return dir
}

// grpcBootstrapOf waits until dir's grpc-bootstrap.json declares a
// provider for every one of ids (and no other), and returns it.
func grpcBootstrapOf(t *testing.T, dir string, ids ...string) []byte {
	t.Helper()
	var data []byte
	ok := pollUntil(20*time.Second, 20*time.Millisecond, func() bool {
		var err error
		if data, err = os.ReadFile(filepath.Join(dir, bootstrap.GRPCFile)); err != nil {
			return false
		}
		var doc struct {
			Providers map[string]json.RawMessage `json:"certificate_providers"`
		}
		if json.Unmarshal(data, &doc) != nil {
			return false
		}
		var got []string
		for name := range doc.Providers {
			if name != "default" {
				got = append(got, name)
			}
		}
		var want []string
		for _, id := range ids {
			want = append(want, agentfiles.Instance(id))
		}
		slices.Sort(got)
		slices.Sort(want)
		return slices.Equal(got, want)
	})
	if !ok {
		t.Fatalf("%s never declared exactly the providers of %v:\n%s", bootstrap.GRPCFile, ids, data)
	}
	return data
}

// TestGRPCAgentCommandWritesBootstrap: `meshca agent` for two grpc agent
// nodes joins, writes its identities' files (key 0600) and a
// grpc-bootstrap.json whose certificate providers read them; a grpc-go
// xDS server and client configured by those very files talk mTLS, each
// seeing the other's SPIFFE ID. An identity assigned later is added to the
// bootstrap as the agent writes its files.
func TestGRPCAgentCommandWritesBootstrap(t *testing.T) {
	m := startMesh(t, nil)
	for _, id := range []string{"greeter", "web", "extra"} {
		m.addIdentity(id)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer unused.Close()
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: grpcMTLSMesh(ln.Addr().(*net.TCPAddr).Port, unused.Addr().(*net.TCPAddr).Port)}, nil, http.StatusCreated)

	srvDir := m.runAgentCommand("greeter-1", "greeter")
	cliDir := m.runAgentCommand("web-1", "web")
	srv := &grpcAgent{m: m, name: "greeter-1", files: filepath.Join(srvDir, "files"), boot: grpcBootstrapOf(t, srvDir, "greeter")}
	cl := &grpcAgent{m: m, name: "web-1", files: filepath.Join(cliDir, "files"), boot: grpcBootstrapOf(t, cliDir, "web")}
	for _, a := range []*grpcAgent{srv, cl} {
		_, key, _ := agentfiles.Paths(a.files, map[string]string{"greeter-1": "greeter", "web-1": "web"}[a.name])
		fi, err := os.Stat(key)
		if err != nil || fi.Mode().Perm() != agentfiles.KeyMode {
			t.Fatalf("%s: key file %s: %v %v", a.name, key, fi, err)
		}
	}
	t.Logf("grpc bootstrap written by meshca agent:\n%s", cl.boot)

	srv.serve(ln, time.Minute)
	r, _, err := callRPC(cl.client("greeter"), 20*time.Second)
	if err != nil {
		t.Fatalf("RPC over mTLS between two meshca agent nodes: %v", err)
	}
	if r.GetHostname() != secretName("web") {
		t.Fatalf("server saw caller %q, want %s", r.GetHostname(), secretName("web"))
	}
	cert, _, _ := agentfiles.Paths(cl.files, "web")
	if r.GetUsername() == "" || !bytes.Contains(mustReadFile(t, cert), []byte("CERTIFICATE")) {
		t.Fatalf("server saw no serial (%q), or the agent's cert.pem is empty", r.GetUsername())
	}

	start := time.Now()
	m.admin("POST", api.PathNodes+"/web-1/identities", api.AssignRequest{Identity: "extra"}, nil, http.StatusOK)
	grpcBootstrapOf(t, cliDir, "web", "extra")
	t.Logf("identity assigned to its provider in grpc-bootstrap.json: %s", time.Since(start).Round(time.Millisecond))
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
