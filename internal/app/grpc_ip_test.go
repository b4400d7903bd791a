package app_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/config"
)

var bootstrapLine = regexp.MustCompile(`meshca bootstrap --server (\S+) --node (\S+) --token (\S+) --ca-sha256 (\S+)`)

// addNodeCLI runs meshca node add and returns the --server, --token and
// --ca-sha256 it prints for meshca bootstrap.
func (m *mesh) addNodeCLI(node, kind string) (server, token, pin string) {
	m.t.Helper()
	out := m.mustCLI("node", "add", node, "--kind", kind)
	f := bootstrapLine.FindStringSubmatch(out)
	if f == nil {
		m.t.Fatalf("node add printed no bootstrap command:\n%s", out)
	}
	return f[1], f[3], f[4]
}

// A proxyless gRPC node bootstrapped exactly as meshca node add says, with
// the IP address it prints, reaches meshca with grpc-go's xDS client and
// gets its routes: the xDS certificate carries the IP.
func TestGRPCBootstrapByIP(t *testing.T) {
	m := startMesh(t, nil)
	port := startEcho(t, "A")
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(map[string][]int{"echo-a": {port}, "echo-b": {port}}, 100, 0)}, nil, http.StatusCreated)

	server, token, pin := m.addNodeCLI("g1", "grpc")
	if !strings.HasPrefix(server, "127.0.0.1:") {
		t.Fatalf("node add tells the node to use %s; want the IP form 127.0.0.1:PORT", server)
	}
	dir := filepath.Join(t.TempDir(), "node")
	m.mustCLI("bootstrap", "--server", server, "--node", "g1", "--token", token, "--ca-sha256", pin, "--out", dir)
	js, err := os.ReadFile(filepath.Join(dir, bootstrap.GRPCFile))
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		XDSServers []struct {
			ServerURI string `json:"server_uri"`
		} `json:"xds_servers"`
	}
	if err := json.Unmarshal(js, &b); err != nil || len(b.XDSServers) != 1 || b.XDSServers[0].ServerURI != server {
		t.Fatalf("grpc-bootstrap.json xds_servers %+v (%v), want server_uri %s", b.XDSServers, err, server)
	}

	rb, err := xds.NewXDSResolverWithConfigForTesting(js)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	// While grpc-go applies its first configuration, its cluster picker can
	// briefly answer Unavailable ("unknown cluster selected for RPC"), which
	// WaitForReady does not wait out: a client retries.
	var r *testgrpc.SimpleResponse
	for {
		r, err = testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			break
		}
		select { // a client's backoff
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("grpc-go xDS client with server_uri %s: %v", server, err)
	}
	if r.GetHostname() != "A" {
		t.Fatalf("answered by %q", r.GetHostname())
	}
	t.Logf("grpc-go xDS client via server_uri %s: first RPC answered in %s", server, time.Since(start).Round(time.Millisecond))
}

// When the host given to bootstrap is not on meshca's xDS certificate, a
// grpc node's bootstrap is refused before anything is written, and the
// message names what the certificate covers and what to change.
func TestGRPCBootstrapRefusesUnverifiableServer(t *testing.T) {
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) { c.XDS.DNSNames = nil })
	server, token, pin := m.addNodeCLI("g2", "grpc")
	_, port, _ := strings.Cut(server, ":")
	dir := filepath.Join(t.TempDir(), "node")
	_, stderr, err := m.cli("bootstrap", "--server", "localhost:"+port, "--node", "g2", "--token", token, "--ca-sha256", pin, "--out", dir)
	if err == nil {
		t.Fatal("bootstrap wrote a grpc config for a host name the xDS certificate does not cover")
	}
	for _, want := range []string{"grpc-go would refuse", "not localhost", "IP:127.0.0.1", "add localhost to xds.dns_names", "meshca node token g2"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("message lacks %q:\n%s", want, stderr)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("bootstrap wrote into %s although it refused (stat: %v)", dir, err)
	}
	t.Logf("refusal: %s", strings.TrimSpace(stderr))
}
