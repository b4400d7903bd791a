package app_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/testkit"
)

// echoServer is a real grpc-go server that answers with its name.
type echoServer struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (e *echoServer) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{Hostname: e.name}, nil
}

func startEcho(t *testing.T, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, &echoServer{name: name})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().(*net.TCPAddr).Port
}

func echoMesh(ports map[string][]int, weightA, weightB int) string {
	var b strings.Builder
	b.WriteString("version: 1\nservices:\n")
	for _, svc := range []string{"echo-a", "echo-b"} {
		fmt.Fprintf(&b, "  - name: %s\n    protocol: http2\n    endpoints:\n", svc)
		for _, p := range ports[svc] {
			fmt.Fprintf(&b, "      - {address: 127.0.0.1, port: %d, locality: {zone: z1}}\n", p)
		}
	}
	fmt.Fprintf(&b, `routes:
  - name: echo
    domains: ["*"]
    rules:
      - match: {prefix: /}
        weighted:
          - {service: echo-a, weight: %d}
          - {service: echo-b, weight: %d}
grpc:
  - name: echo
    route: echo
`, weightA, weightB)
	return b.String()
}

// grpcClient joins a grpc node and dials xds:///echo with the bootstrap
// meshca generates for it.
func grpcClient(t *testing.T, m *mesh, node string) testgrpc.TestServiceClient {
	t.Helper()
	_, port, _ := net.SplitHostPort(m.app.XDS)
	return grpcClientOf(t, m, node, "localhost:"+port)
}

// grpcClientOf is grpcClient with the xDS servers of the bootstrap: the
// first, then the other replicas.
func grpcClientOf(t *testing.T, m *mesh, node, server string, replicas ...string) testgrpc.TestServiceClient {
	t.Helper()
	tok := m.addNode(node, "grpc")
	cert, err := m.join(node, tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, testkit.CertPEM(der)...)
	}
	write(bootstrap.CertFile, chain)
	write(bootstrap.KeyFile, testkit.KeyPEM(t, cert.PrivateKey))
	resp, err := m.http.Get("http://" + m.app.Admin + api.PathCABundle)
	if err != nil {
		t.Fatal(err)
	}
	bundle := readBody(t, resp)
	write(bootstrap.BundleFile, bundle)
	// grpc-go verifies meshca's xDS server against its issuing CAs.
	resp, err = m.http.Get("http://" + m.app.Admin + api.PathCAPin)
	if err != nil {
		t.Fatal(err)
	}
	write(bootstrap.IssuersFile, readBody(t, resp))
	js, err := bootstrap.GRPC(bootstrap.Params{Node: node, TrustDomain: "mesh.local", Server: server, Replicas: replicas, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := xds.NewXDSResolverWithConfigForTesting(js)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// spread makes n calls (with opts) and counts the answers by server.
func spread(t *testing.T, c testgrpc.TestServiceClient, n int, opts ...grpc.CallOption) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		r, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{}, opts...)
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		got[r.GetHostname()]++
	}
	return got
}

// eventually retries batches of calls (with opts) until ok holds.
func eventually(t *testing.T, c testgrpc.TestServiceClient, what string, ok func(map[string]int) bool, opts ...grpc.CallOption) {
	t.Helper()
	// grpc-go applies an xDS update to its picker without telling anyone:
	// send batches until the spread shows it.
	var got map[string]int
	if !pollUntil(15*time.Second, 50*time.Millisecond, func() bool {
		got = spread(t, c, 40, opts...)
		return ok(got)
	}) {
		t.Fatalf("%s: last batch %v", what, got)
	}
}

func TestGRPCProxylessWeightsAndEndpoints(t *testing.T) {
	m := startMesh(t, nil)
	ports := map[string][]int{"echo-a": {startEcho(t, "A")}, "echo-b": {startEcho(t, "B")}}
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(ports, 80, 20)}, nil, http.StatusCreated)
	c := grpcClient(t, m, "g1")

	got := spread(t, c, 1000)
	t.Logf("80/20 route over 1000 RPCs: %v", got)
	// 4 standard deviations of a binomial(1000, 0.2) is about 50 calls.
	if got["A"]+got["B"] != 1000 || got["B"] < 150 || got["B"] > 250 {
		t.Fatalf("split %v is not 80/20 within ±5%%", got)
	}

	// Move all traffic to B live.
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(ports, 0, 100)}, nil, http.StatusCreated)
	eventually(t, c, "weights 0/100", func(g map[string]int) bool { return g["B"] == 40 })
	if got := spread(t, c, 1000); got["B"] != 1000 {
		t.Fatalf("after 0/100: %v", got)
	}

	// Add an endpoint to echo-b, then remove the first one.
	ports["echo-b"] = append(ports["echo-b"], startEcho(t, "C"))
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(ports, 0, 100)}, nil, http.StatusCreated)
	eventually(t, c, "new endpoint C", func(g map[string]int) bool { return g["C"] > 0 && g["B"] > 0 })
	ports["echo-b"] = ports["echo-b"][1:]
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(ports, 0, 100)}, nil, http.StatusCreated)
	eventually(t, c, "endpoint B removed", func(g map[string]int) bool { return g["C"] == 40 })

	var n api.Node
	m.admin("GET", api.PathNodes+"/g1", nil, &n, http.StatusOK)
	if n.Connection.NACKs != 0 {
		t.Fatalf("grpc-go NACKed: %d (last: %s)", n.Connection.NACKs, n.Connection.LastNACK)
	}
	if len(n.Connection.Acked) < 4 {
		t.Fatalf("acked types %v, want listeners, routes, clusters, endpoints", n.Connection.Acked)
	}
}
