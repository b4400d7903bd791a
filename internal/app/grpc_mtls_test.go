package app_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/testkit"
)

// peerEcho answers with the caller's SPIFFE ID (Hostname) and certificate
// serial (Username), as the server's TLS handshake saw them.
type peerEcho struct {
	testgrpc.UnimplementedTestServiceServer
}

func (peerEcho) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	p, _ := peer.FromContext(ctx)
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return &testgrpc.SimpleResponse{Hostname: "no client certificate"}, nil
	}
	leaf := info.State.PeerCertificates[0]
	id := ""
	if len(leaf.URIs) == 1 {
		id = leaf.URIs[0].String()
	}
	return &testgrpc.SimpleResponse{Hostname: id, Username: leaf.SerialNumber.Text(16)}, nil
}

// grpcAgent is a proxyless gRPC agent node as its agent leaves it: joined,
// with a node connection to ask for certificates, and the files of its
// identities written where the grpc bootstrap points.
type grpcAgent struct {
	m     *mesh
	name  string
	conn  *grpc.ClientConn
	files string // the agent's --write-files directory
	boot  []byte // grpc-bootstrap.json
}

// addGRPCAgent registers an agent node of kind grpc holding ids, joins it
// and writes its node files and its grpc bootstrap.
func (m *mesh) addGRPCAgent(name string, ids ...string) *grpcAgent {
	return m.addGRPCNode(name, true, ids...)
}

// addGRPCNode is addGRPCAgent for an agent node or, with agent false, a
// plain grpc node (whose bootstrap declares no identity files).
func (m *mesh) addGRPCNode(name string, agent bool, ids ...string) *grpcAgent {
	t := m.t
	t.Helper()
	var tok api.JoinToken
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: name, Kind: "grpc", Identities: ids, Agent: agent}, &tok, http.StatusCreated)
	cert, err := m.join(name, tok.Token)
	if err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
	dir := t.TempDir()
	write := func(file string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, testkit.CertPEM(der)...)
	}
	write(bootstrap.CertFile, chain)
	write(bootstrap.KeyFile, testkit.KeyPEM(t, cert.PrivateKey))
	write(bootstrap.BundleFile, m.bundlePEM())
	resp, err := m.http.Get("http://" + m.app.Admin + api.PathCAPin)
	if err != nil {
		t.Fatal(err)
	}
	write(bootstrap.IssuersFile, readBody(t, resp))
	a := &grpcAgent{m: m, name: name, conn: m.dial(cert), files: filepath.Join(dir, "files")}
	_, port, _ := net.SplitHostPort(m.app.XDS)
	p := bootstrap.Params{Node: name, TrustDomain: "mesh.local", Server: "localhost:" + port, Dir: dir}
	if agent {
		p.AgentFiles, p.Identities = a.files, ids
	}
	a.boot, err = bootstrap.GRPC(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (m *mesh) bundlePEM() []byte {
	m.t.Helper()
	resp, err := m.http.Get("http://" + m.app.Admin + api.PathCABundle)
	if err != nil {
		m.t.Fatal(err)
	}
	return readBody(m.t, resp)
}

// renew does what the agent does for ident: a new key, its CSR signed by
// meshca over the node connection, the three files replaced. It returns
// the new certificate's serial.
func (a *grpcAgent) renew(ident string) string {
	t := a.m.t
	t.Helper()
	key, csr := agentCSR(t)
	resp, _, err := signCSR(t, a.conn, ident, csr)
	if err != nil {
		t.Fatalf("%s: sign %s: %v", a.name, ident, err)
	}
	if err := agentfiles.Write(a.files, ident, []byte(resp.ChainPEM), testkit.KeyPEM(t, key), a.m.bundlePEM()); err != nil {
		t.Fatal(err)
	}
	return resp.Serial
}

// tlsPair is ident's certificate for a key made here, signed through a's
// node connection, for hand-written peers.
func (a *grpcAgent) tlsPair(ident string) *tls.Certificate {
	t := a.m.t
	t.Helper()
	key, csr := agentCSR(t)
	resp, _, err := signCSR(t, a.conn, ident, csr)
	if err != nil {
		t.Fatalf("%s: sign %s: %v", a.name, ident, err)
	}
	pair, err := testkit.TLSCert(resp.ChainPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// serve runs an xDS-enabled grpc-go server with xDS credentials on ln, as
// the agent node configures it, and waits until meshca's listener made it
// serve. Connections live at most maxAge, so clients handshake again.
func (a *grpcAgent) serve(ln net.Listener, maxAge time.Duration) {
	t := a.m.t
	t.Helper()
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan error, 8)
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(a.boot),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: maxAge, MaxConnectionAgeGrace: 10 * time.Second}),
		xds.ServingModeCallback(func(_ net.Addr, args xds.ServingModeChangeArgs) {
			if args.Mode == connectivity.ServingModeServing {
				serving <- nil
			} else if args.Err != nil {
				serving <- args.Err
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, peerEcho{})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	select {
	case err := <-serving:
		if err != nil {
			t.Fatalf("xDS server not serving: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("xDS server never got its listener from meshca")
	}
}

// client dials xds:///target with xDS credentials.
func (a *grpcAgent) client(target string) testgrpc.TestServiceClient {
	t := a.m.t
	t.Helper()
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := xds.NewXDSResolverWithConfigForTesting(a.boot)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// callRPC makes one RPC and returns what the server saw of the caller and
// the serial of the server's certificate the client saw.
func callRPC(c testgrpc.TestServiceClient, timeout time.Duration) (*testgrpc.SimpleResponse, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var p peer.Peer
	r, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Peer(&p))
	if err != nil {
		return nil, "", err
	}
	serverSerial := ""
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		serverSerial = info.State.PeerCertificates[0].SerialNumber.Text(16)
	}
	return r, serverSerial, nil
}

// plainClient dials addr directly with creds (no xDS).
func plainClient(t *testing.T, addr string, creds credentials.TransportCredentials) testgrpc.TestServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

func grpcMTLSMesh(greeter, impostor int) string {
	return fmt.Sprintf(`version: 1
services:
  - name: greeter
    identity: greeter
    protocol: http2
    endpoints:
      - {address: 127.0.0.1, port: %d}
  - name: impostor
    identity: greeter
    protocol: http2
    endpoints:
      - {address: 127.0.0.1, port: %d}
grpc:
  - name: greeter
  - name: impostor
grpc_servers:
  - service: greeter
    allowed_spiffe_ids: [{exact: spiffe://mesh.local/web}]
`, greeter, impostor)
}

// TestGRPCAgentMTLS: a grpc-go client and an xDS grpc-go server, both
// configured by meshca as agent nodes and reading the certificate files
// their agents write, talk mTLS with SPIFFE IDs checked; a server with
// another identity is refused by the client's SAN matcher; a caller with
// an identity the server does not allow gets PermissionDenied; a client
// without a certificate of the mesh, and a plaintext client, are refused
// by the server; replacing both sides' files during a stream of RPCs
// fails none.
func TestGRPCAgentMTLS(t *testing.T) {
	m := startMesh(t, nil)
	for _, id := range []string{"greeter", "web", "other"} {
		m.addIdentity(id)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	impLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: grpcMTLSMesh(port, impLn.Addr().(*net.TCPAddr).Port)}, nil, http.StatusCreated)

	// An agent grpc node with no identity could only call greeter in
	// plaintext: meshca refuses to add it.
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: "lonely-1", Kind: "grpc", Agent: true}, nil, http.StatusBadRequest)

	srvNode := m.addGRPCAgent("greeter-1", "greeter")
	cliNode := m.addGRPCAgent("web-1", "web")
	srvSerial := srvNode.renew("greeter")
	cliSerial := cliNode.renew("web")
	srvNode.serve(ln, 300*time.Millisecond)
	c := cliNode.client("greeter")

	// mTLS both ways, each side seeing the other's SPIFFE ID.
	r, seen, err := callRPC(c, 20*time.Second)
	if err != nil {
		t.Fatalf("RPC over mTLS: %v", err)
	}
	if r.GetHostname() != secretName("web") || r.GetUsername() != cliSerial {
		t.Fatalf("server saw caller %q serial %q, want %s serial %s", r.GetHostname(), r.GetUsername(), secretName("web"), cliSerial)
	}
	if seen != srvSerial {
		t.Fatalf("client saw server serial %q, want %s", seen, srvSerial)
	}

	// A server presenting another identity of the same CA is refused by the
	// client's SAN matcher: impostor is declared with identity greeter but
	// its server holds "other" (a valid certificate of the mesh).
	otherNode := m.addGRPCAgent("other-1", "other")
	impCert := otherNode.tlsPair("other")
	impCfg := &tls.Config{Certificates: []tls.Certificate{*impCert}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}
	imp := grpc.NewServer(grpc.Creds(credentials.NewTLS(impCfg)))
	testgrpc.RegisterTestServiceServer(imp, peerEcho{})
	go imp.Serve(impLn)
	t.Cleanup(imp.Stop)
	_, _, err = callRPC(cliNode.client("impostor"), 15*time.Second)
	if err == nil || !strings.Contains(err.Error(), "do not match any of the accepted SANs") {
		t.Fatalf("server with another identity: err = %v, want a SAN mismatch", err)
	}
	t.Logf("server with identity other for a greeter service: %v", err)

	// A caller of the mesh holding another identity than the allowed one
	// passes the TLS handshake and is refused by the server's RBAC filter.
	otherNode.renew("other")
	_, _, err = callRPC(otherNode.client("greeter"), 15*time.Second)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("caller with identity other: err = %v, want PermissionDenied", err)
	}
	t.Logf("caller with identity other, not in grpc_servers.allowed_spiffe_ids: %v", err)

	// A plain grpc node (no agent) gets greeter's cluster without TLS, as
	// before, and the server's mTLS listener refuses its plaintext.
	plainNode := m.addGRPCNode("plain-1", false)
	_, _, err = callRPC(plainNode.client("greeter"), 15*time.Second)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("plain grpc node: err = %v, want Unavailable", err)
	}
	t.Logf("plain grpc node through xDS: %v", err)

	// A client whose certificate meshca did not issue is refused by the
	// server (require_client_certificate, verified against the bundle); the
	// same hand-written client with a mesh certificate gets through.
	stranger := testkit.NewCA(t, pkix.Name{CommonName: "stranger"}, time.Now().Add(time.Hour), nil)
	skey := testkit.Key(t)
	sleaf := stranger.Sign(t, &x509.Certificate{SerialNumber: testkit.Serial(t), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, skey.Public())
	addr := ln.Addr().String()
	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		ok    bool
	}{
		{"plaintext", insecure.NewCredentials(), false},
		{"foreign CA certificate", handClient(testkit.Pair(sleaf, skey, stranger.Cert)), false},
		{"no client certificate", handClient(nil), false},
		{"mesh certificate", handClient(cliNode.tlsPair("web")), true},
	} {
		_, _, err := callRPC(plainClient(t, addr, tc.creds), 3*time.Second)
		if (err == nil) != tc.ok {
			t.Fatalf("%s client: err = %v, want success %v", tc.name, err, tc.ok)
		}
		t.Logf("%s client straight to the server: err = %v", tc.name, err)
	}

	// Rotation: both agents replace their files while RPCs run without a
	// pause. Connections end every 300ms, so new handshakes pick up the
	// new files; not one RPC may fail.
	var (
		mu             sync.Mutex
		calls, failed  int
		lastErr        error
		sawCli, sawSrv string
		stop           = make(chan struct{})
		done           = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, s, err := callRPC(c, 10*time.Second)
			mu.Lock()
			calls++
			if err != nil {
				failed++
				lastErr = err
			} else {
				sawCli, sawSrv = r.GetUsername(), s
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	newSrv := srvNode.renew("greeter")
	newCli := cliNode.renew("web")
	rotated := pollUntil(20*time.Second, 20*time.Millisecond, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return sawCli == newCli && sawSrv == newSrv
	})
	took := time.Since(start)
	// Keep going for 50 more RPCs: connections made after the rotation
	// keep working on the new files.
	mu.Lock()
	atRotation := calls
	mu.Unlock()
	more := pollUntil(20*time.Second, 20*time.Millisecond, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls >= atRotation+50
	})
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	t.Logf("rotation under load: %d RPCs (%d until both new certificates were in use, %v), %d failed; server now presents %s, client %s",
		calls, atRotation, took.Round(time.Millisecond), failed, sawSrv, sawCli)
	if !rotated {
		t.Fatalf("new certificates not in use within 20s: server presents %s (want %s), client %s (want %s)", sawSrv, newSrv, sawCli, newCli)
	}
	if !more {
		t.Fatalf("only %d RPCs after the rotation in 20s", calls-atRotation)
	}
	if failed != 0 {
		t.Fatalf("%d of %d RPCs failed during rotation, last: %v", failed, calls, lastErr)
	}
}

// handClient is TLS client credentials that always present cert (nil:
// none), whatever CAs the server asks for, and do not check the server:
// only the server's decision is under test.
func handClient(cert *tls.Certificate) credentials.TransportCredentials {
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}}
	return credentials.NewTLS(cfg)
}
